"""The papers' models by hub id, with their shapes from each checkpoint's config.json, so that
`ppl-ecmh models` and `ppl-ecmh plan` can size a run offline, before any download. Loading one
still reads its own config.json; these entries only plan. LongRoPE factors are left at 1 here:
they change no shape."""

from __future__ import annotations

import dataclasses

from ppl_ecmh.lm.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class CatalogModel:
    hub_id: str
    paper: str  # which paper evaluates it
    config: ModelConfig
    instruct: bool  # prompts go through its chat template


def _longrope(config: ModelConfig) -> ModelConfig:
    ones = (1.0,) * (config.rotary_dim // 2)
    return dataclasses.replace(config, rope_scaling=(
        ("long_factor", ones), ("original_max_position_embeddings", 4096), ("rope_type", "longrope"),
        ("short_factor", ones)))


_QWEN25_7B = dict(architecture="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                  num_heads=28, num_kv_heads=4, head_dim=128, attention_bias=True, rms_norm_eps=1e-6)
_PHI_MINI = dict(architecture="phi3", hidden_size=3072, intermediate_size=8192, num_layers=32, rms_norm_eps=1e-5,
                 max_position_embeddings=131072)

PAPER_MODELS = {model.hub_id: model for model in (
    CatalogModel("Qwen/Qwen2.5-7B", "ECMH", ModelConfig(**_QWEN25_7B, rope_theta=1e6, max_position_embeddings=131072),
                 instruct=False),
    CatalogModel("Qwen/Qwen2.5-Math-7B", "ECMH, Karan & Du",
                 ModelConfig(**_QWEN25_7B, rope_theta=1e4, max_position_embeddings=4096), instruct=False),
    CatalogModel("Qwen/Qwen3-8B-Base", "ECMH", ModelConfig(
        architecture="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36,
        num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1e6, max_position_embeddings=32768, qk_norm=True),
                 instruct=False),
    CatalogModel("microsoft/Phi-3.5-mini-instruct", "ECMH", _longrope(ModelConfig(
        **_PHI_MINI, vocab_size=32064, num_heads=32, num_kv_heads=32, head_dim=96)), instruct=True),
    CatalogModel("microsoft/Phi-4-mini-instruct", "ECMH", _longrope(ModelConfig(
        **_PHI_MINI, vocab_size=200064, num_heads=24, num_kv_heads=8, head_dim=128, partial_rotary_factor=0.75,
        tie_word_embeddings=True)), instruct=True),
    CatalogModel("Qwen/Qwen2.5-Math-1.5B", "accelerator check", ModelConfig(
        architecture="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
        num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=1e4, attention_bias=True, tie_word_embeddings=True,
        max_position_embeddings=4096), instruct=False),
    CatalogModel("deepseek-ai/deepseek-math-7b-base", "Karan & Du", ModelConfig(
        architecture="llama", vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_layers=30,
        num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=4096), instruct=False),
)}
