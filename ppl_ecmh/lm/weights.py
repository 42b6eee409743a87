"""Turning per-tensor checkpoints (Hugging Face names, [out, in] layout) into the decoder's params."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from ppl_ecmh.errors import CorruptCheckpointError
from ppl_ecmh.lm.config import ModelConfig, rope_inverse_frequencies

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

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(dtype) -> jnp.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    return dtype


def assemble_params(config: ModelConfig, tensor: Callable[[str], np.ndarray], dtype="float32") -> dict:
    """Build decoder params from `tensor(hf_name) -> float array`; raises if a tensor is missing."""
    dtype = resolve_dtype(dtype)

    def get(name: str) -> np.ndarray:
        try:
            return np.asarray(tensor(name), dtype=np.float32)
        except KeyError:
            raise CorruptCheckpointError(f"checkpoint has no tensor {name!r}") from None

    names = _LAYER_MATRICES | _LAYER_VECTORS | (_LAYER_BIASES if config.attention_bias else {})
    layers = [
        {name: jnp.asarray(get(f"model.layers.{i}.{hf}"), dtype) for name, hf in names.items()}
        for i in range(config.num_layers)
    ]
    params = {
        "embed": jnp.asarray(get("model.embed_tokens.weight"), dtype),
        "layers": layers,
        "final_norm": jnp.asarray(get("model.norm.weight"), dtype),
        "inv_freq": jnp.asarray(rope_inverse_frequencies(config)),
    }
    if not config.tie_word_embeddings:
        params["lm_head"] = jnp.asarray(get("lm_head.weight"), dtype)
    return params
