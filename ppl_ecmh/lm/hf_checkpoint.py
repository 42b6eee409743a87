"""Loading Hugging Face model folders (config.json, *.safetensors, tokenizer files) and hub ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ppl_ecmh.errors import CorruptCheckpointError, ModelNotFoundError, UnsupportedModelError
from ppl_ecmh.lm.config import SUPPORTED_ARCHITECTURES, ModelConfig
from ppl_ecmh.lm.transformer import Transformer
from ppl_ecmh.lm.weights import assemble_params


def config_from_hf(hf: dict) -> ModelConfig:
    """A ModelConfig from a Hugging Face config.json (transformers v4's `rope_scaling` or v5's
    `rope_parameters`); an architecture or field this decoder does not implement is one error
    naming it."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    heads = hf["num_attention_heads"]
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    rope = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    partial = hf.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
    return ModelConfig(
        architecture=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_scaling=_rope_scaling(hf, rope),
        attention_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids,
        qk_norm=model_type == "qwen3",
        partial_rotary_factor=float(partial),
        sliding_window=hf.get("sliding_window") if hf.get("use_sliding_window", True) else None,
    )


def _rope_scaling(hf: dict, rope: dict) -> tuple | None:
    """The scaling entries of a config's RoPE dict as a hashable tuple, None for plain RoPE. As in
    transformers, a top-level `original_max_position_embeddings` (Phi-3) wins over the dict's, and
    Phi-3's `su` and `yarn` are its LongRoPE."""
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    kind = scaling.pop("type", None)
    kind = scaling.pop("rope_type", kind) or "default"
    if hf.get("model_type") == "phi3" and kind in ("su", "yarn"):
        kind = "longrope"
    if kind == "default":
        return None
    if kind in ("llama3", "yarn", "longrope"):
        scaling["original_max_position_embeddings"] = (hf.get("original_max_position_embeddings")
                                                       or scaling.get("original_max_position_embeddings")
                                                       or hf.get("max_position_embeddings"))
    scaling["rope_type"] = kind
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in scaling.items()))


def _read_safetensors(folder: Path) -> dict:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CorruptCheckpointError(f"no *.safetensors files in {folder}")
    tensors = {}
    for file in files:
        try:
            with safe_open(str(file), framework="flax") as handle:  # flax: reads bfloat16 too
                for name in handle.keys():
                    tensors[name] = handle.get_tensor(name)
        except Exception as error:
            raise CorruptCheckpointError(f"cannot read {file}: {error}") from None
    return tensors


def load_hf_folder(folder: str | Path, dtype="float32"):
    """(Transformer, tokenizer or None) from a local Hugging Face model folder."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{folder} has no config.json")
    config = config_from_hf(json.loads(config_file.read_text()))
    tensors = _read_safetensors(folder)
    params = assemble_params(config, lambda name: np.asarray(tensors[name], np.float32), dtype)
    return Transformer(params, config), _load_tokenizer(folder)


def _load_tokenizer(folder: Path):
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def download_from_hub(repo_id: str) -> Path:
    """Fetch a model's config, weights and tokenizer from the Hugging Face hub (needs internet)."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.jinja"])
    except Exception as error:
        raise ModelNotFoundError(f"cannot fetch {repo_id!r} from the Hugging Face hub: {error}") from None
    return Path(path)
