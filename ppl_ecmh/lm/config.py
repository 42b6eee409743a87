"""Architecture hyper-parameters of a decoder-only transformer (Llama family and Qwen2).

The differences between the supported families are expressed here, not in copies of the forward
pass: Qwen2 is a Llama with biases on the q/k/v projections.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ppl_ecmh.errors import UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static shape and numerics of a decoder. Hashable, so it can be a static jit argument."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, object], ...] | None = None
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"unsupported architecture {self.architecture!r}; supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def eos_token_id(self) -> int:
        """The first end-of-sequence id (generation stops on any of `eos_token_ids`)."""
        return self.eos_token_ids[0]


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """Per-pair rotary frequencies, with the rope scaling of the config applied (float32)."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = dict(config.rope_scaling or ())
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        pass
    elif kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        inv_freq = _llama3_scaled(inv_freq, scaling)
    else:
        raise UnsupportedModelError(f"unsupported rope scaling type {kind!r}")
    return inv_freq.astype(np.float32)


def _llama3_scaled(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    """Llama 3.1 frequency-dependent scaling: long wavelengths divided by `factor`, short kept."""
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return np.where(
        wavelength > original / low,
        inv_freq / factor,
        np.where(wavelength < original / high, inv_freq, blended),
    )
