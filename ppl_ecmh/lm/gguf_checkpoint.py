"""Loading GGUF files (llama.cpp's format): metadata -> config, dequantized tensors -> params."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ppl_ecmh.errors import CorruptCheckpointError, UnsupportedModelError
from ppl_ecmh.lm.config import ModelConfig
from ppl_ecmh.lm.tokenizer import tokenizer_from_gguf
from ppl_ecmh.lm.transformer import Transformer
from ppl_ecmh.lm.weights import assemble_params

SUPPORTED_QUANTIZATIONS = frozenset(
    {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
)
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
# llama.cpp stores these architectures' Q and K rows interleaved for its rotary layout
_PERMUTED_QK = frozenset({"llama", "mistral"})

_GGUF_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_qkv.weight": "self_attn.qkv_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _hf_name(gguf_name: str, arch: str) -> str | None:
    if gguf_name in _GLOBAL_GGUF_TO_HF:
        return _GLOBAL_GGUF_TO_HF[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GGUF_TO_HF:
        # llama.cpp's Phi-3 keeps gate and up fused in ffn_up (gate first), as the checkpoint does
        hf = "mlp.gate_up_proj.weight" if arch == "phi3" and parts[2] == "ffn_up.weight" else _GGUF_TO_HF[parts[2]]
        return f"model.layers.{parts[1]}.{hf}"
    return None


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleaving of a Q or K projection ([out, ...] layout)."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def read_gguf(path: str):
    """The reader and its metadata as plain Python values; raises CorruptCheckpointError."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:  # the reader raises assorted errors on damaged files
        raise CorruptCheckpointError(f"cannot read GGUF file {path}: {error}") from None
    size = os.path.getsize(path)
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > size:
        raise CorruptCheckpointError(f"GGUF file {path} is truncated ({size} of {end} bytes)")
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            metadata[key] = field.contents()
        except Exception as error:
            raise CorruptCheckpointError(f"GGUF metadata {key!r} is unreadable: {error}") from None
    return reader, metadata


def config_from_gguf(metadata: dict, tensor_names: set[str]) -> ModelConfig:
    arch = metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(GGUF_ARCHITECTURES)}")

    def meta(key, default=None):
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise CorruptCheckpointError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden, heads = int(meta("embedding_length")), int(meta("attention.head_count"))
    if hidden < 1 or heads < 1 or hidden % heads:
        raise CorruptCheckpointError(f"GGUF metadata: {heads} attention heads cannot split {hidden} dimensions")
    if "tokenizer.ggml.tokens" not in metadata:
        raise CorruptCheckpointError("GGUF metadata lacks tokenizer.ggml.tokens (the vocabulary)")
    scaling_type = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling_type == "linear":
        rope_scaling = (("rope_type", "linear"), ("factor", float(meta("rope.scaling.factor"))))
    elif scaling_type in ("none", None):
        rope_scaling = None
    else:
        raise UnsupportedModelError(f"unsupported GGUF rope scaling {scaling_type!r}")
    eos_ids = [metadata.get(f"tokenizer.ggml.{k}") for k in ("eos_token_id", "eot_token_id", "eom_token_id")]
    head_dim = int(meta("attention.key_length", hidden // heads))
    return ModelConfig(
        architecture=arch,
        vocab_size=len(metadata["tokenizer.ggml.tokens"]),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")),
        num_heads=heads,
        num_kv_heads=int(meta("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        tie_word_embeddings="output.weight" not in tensor_names,
        max_position_embeddings=int(meta("context_length")),
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys(int(i) for i in eos_ids if i is not None)),
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        partial_rotary_factor=int(meta("rope.dimension_count", head_dim)) / head_dim,
    )


def load_gguf(path: str, dtype="float32"):
    """(Transformer, tokenizer) from a GGUF file, weights dequantized to `dtype`."""
    import gguf

    reader, metadata = read_gguf(path)
    tensors = {t.name: t for t in reader.tensors}
    unsupported = sorted({t.tensor_type.name for t in reader.tensors} - SUPPORTED_QUANTIZATIONS)
    if unsupported:
        raise UnsupportedModelError(f"unsupported GGUF quantization type(s): {', '.join(unsupported)}")
    config = config_from_gguf(metadata, set(tensors))
    by_hf_name = {_hf_name(name, config.architecture): tensor for name, tensor in tensors.items()
                  if _hf_name(name, config.architecture)}

    def tensor(hf_name: str) -> np.ndarray:
        t = by_hf_name[hf_name]
        try:
            weight = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as error:
            raise CorruptCheckpointError(f"cannot dequantize {t.name}: {error}") from None
        weight = weight.reshape(tuple(int(d) for d in reversed(t.shape)))
        if config.architecture in _PERMUTED_QK:
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                weight = unpermute_rows(weight, config.num_heads)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                weight = unpermute_rows(weight, config.num_kv_heads)
        return weight

    config = dataclasses.replace(config, rope_scaling=_stored_rope_scaling(config, tensors, metadata))
    return Transformer(assemble_params(config, tensor, dtype), config), tokenizer_from_gguf(metadata)


def _stored_rope_scaling(config: ModelConfig, tensors: dict, metadata: dict) -> tuple | None:
    """RoPE scaling that llama.cpp stores as tensors: Llama 3.1's per-frequency divisors
    (`rope_freqs`), Phi-3's LongRoPE factors (`rope_factors_short` / `_long`, with the original
    context and attention factor in the metadata); otherwise the config's own."""
    import gguf

    def values(name: str) -> tuple[float, ...]:
        t = tensors[name]
        return tuple(float(v) for v in np.reshape(gguf.quants.dequantize(t.data, t.tensor_type), -1))

    if "rope_freqs.weight" in tensors:
        return (("factors", values("rope_freqs.weight")), ("rope_type", "frequency_factors"))
    if "rope_factors_long.weight" in tensors:
        arch = config.architecture
        original = metadata.get(f"{arch}.rope.scaling.original_context_length")
        if original is None or "rope_factors_short.weight" not in tensors:
            raise CorruptCheckpointError("GGUF file has LongRoPE's long factors but not its short factors and "
                                         f"{arch}.rope.scaling.original_context_length")
        scaling = dict(rope_type="longrope", long_factor=values("rope_factors_long.weight"),
                       short_factor=values("rope_factors_short.weight"), original_max_position_embeddings=int(original))
        if f"{arch}.rope.scaling.attn_factor" in metadata:
            scaling["attention_factor"] = float(metadata[f"{arch}.rope.scaling.attn_factor"])
        return tuple(sorted(scaling.items()))
    return config.rope_scaling
