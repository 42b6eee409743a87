"""Turning per-tensor checkpoints (Hugging Face names, [out, in] layout) into the decoder's params.

Phi-3 checkpoints fuse q/k/v into one `qkv_proj` ([H*d, KV*d, KV*d] rows) and gate/up into one
`gate_up_proj` (gate first); they are split here, so the forward pass sees every architecture
alike.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
import numpy as np

from ppl_ecmh.errors import CorruptCheckpointError
from ppl_ecmh.lm.config import ModelConfig
from ppl_ecmh.lm.transformer import rope_params

# decoder param name -> Hugging Face name inside layer i; matrices keep the [out, in] layout
_LAYER_MATRICES = {
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}
_LAYER_VECTORS = {
    "attn_norm": "input_layernorm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
}
_LAYER_BIASES = {
    "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
}
_QK_NORMS = {
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(dtype) -> jnp.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    return dtype


def layer_tensor_names(config: ModelConfig) -> dict[str, str]:
    """Decoder param name -> Hugging Face name (within a layer) of the tensors `config` has."""
    return (_LAYER_MATRICES | _LAYER_VECTORS | (_LAYER_BIASES if config.attention_bias else {})
            | (_QK_NORMS if config.qk_norm else {}))


def fused_rows(config: ModelConfig) -> dict[str, tuple[str, int, int]]:
    """Hugging Face name -> (fused name, first row, end row) for an architecture whose checkpoints
    fuse projections (Phi-3); empty for the others."""
    if config.architecture != "phi3":
        return {}
    q, kv, ff = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim, config.intermediate_size
    return {"self_attn.q_proj.weight": ("self_attn.qkv_proj.weight", 0, q),
            "self_attn.k_proj.weight": ("self_attn.qkv_proj.weight", q, q + kv),
            "self_attn.v_proj.weight": ("self_attn.qkv_proj.weight", q + kv, q + 2 * kv),
            "mlp.gate_proj.weight": ("mlp.gate_up_proj.weight", 0, ff),
            "mlp.up_proj.weight": ("mlp.gate_up_proj.weight", ff, 2 * ff)}


def assemble_params(config: ModelConfig, tensor: Callable[[str], np.ndarray], dtype="float32") -> dict:
    """Build decoder params from `tensor(hf_name) -> float array`; raises if a tensor is missing."""
    dtype = resolve_dtype(dtype)
    fused = fused_rows(config)

    @functools.lru_cache(maxsize=1)  # a fused tensor is read once for its three (or two) parts
    def read(name: str) -> np.ndarray:
        try:
            return np.asarray(tensor(name), dtype=np.float32)
        except KeyError:
            raise CorruptCheckpointError(f"checkpoint has no tensor {name!r}") from None

    def get(layer: int, name: str):
        source, first, end = fused.get(name, (name, 0, None))
        weight = read(f"model.layers.{layer}.{source}")
        if end is not None and weight.shape[0] < end:
            raise CorruptCheckpointError(f"{source} of layer {layer} has {weight.shape[0]} rows; the config needs {end}")
        return jnp.asarray(weight[first:end], dtype)

    names = layer_tensor_names(config)
    layers = [{name: get(i, hf) for name, hf in names.items()} for i in range(config.num_layers)]
    params = {
        "embed": jnp.asarray(read("model.embed_tokens.weight"), dtype),
        "layers": layers,
        "final_norm": jnp.asarray(read("model.norm.weight"), dtype),
    } | rope_params(config)
    if not config.tie_word_embeddings:
        params["lm_head"] = jnp.asarray(read("lm_head.weight"), dtype)
    return params
