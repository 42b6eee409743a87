"""Rotary position tables: each scaling type's inverse frequencies and attention factor, and the
scaling a run of a given length gets.

Every type follows transformers' `modeling_rope_utils` (the oracle the tests compare against):
`linear` and `llama3` (Llama 3.1) rescale frequencies; `yarn` blends interpolated and extrapolated
frequencies and scales attention; `longrope` (Phi-3) divides them by per-frequency factors, short
ones for sequences within `original_max_position_embeddings` and long ones past it, and scales
attention. LongRoPE's choice depends on the length, so it is made once for the whole run (the
length its cache holds), as vLLM does, never mid-sequence, where cached keys would have been
rotated by the other set. A run longer than a model's limit whose RoPE is unscaled may be stretched
with YaRN, factor = length / limit, as the ECMH paper's code does for Qwen2.5-Math-7B; only when
asked (`stretch`), since it changes the model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ppl_ecmh.errors import PromptTooLongError, UnsupportedModelError

ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope", "frequency_factors")


class RopeTables(NamedTuple):
    """What the forward pass needs: per-pair inverse frequencies over the rotated dims, and the
    factor that multiplies cos and sin (so attention logits scale by its square)."""

    inv_freq: np.ndarray  # [rotary_dim / 2] float32
    attention_factor: float


def scaling_type(scaling: dict) -> str:
    return scaling.get("rope_type", scaling.get("type", "default"))


def run_scaling(config, length: int, stretch: bool = False) -> tuple | None:
    """The RoPE scaling a run of `length` positions uses: the checkpoint's own, or, with `stretch`,
    YaRN stretched to `length` when the run is longer than the model's limit and its RoPE is
    unscaled. Raises PromptTooLongError (a ValueError) when the model does not reach `length`."""
    limit = config.max_position_embeddings
    if config.sliding_window is not None and length > config.sliding_window:
        raise UnsupportedModelError(
            f"sliding_window: the model attends {config.sliding_window} positions back, which this "
            f"decoder does not implement; a run of {length} positions would need it")
    if length <= limit:
        return config.rope_scaling
    if not stretch:
        raise PromptTooLongError(
            f"max_new_tokens: prompt + max_new_tokens ({length} tokens) exceeds the model's context of {limit} "
            "tokens (--stretch-context stretches an unscaled RoPE with YaRN, as the ECMH code does)")
    if config.rope_scaling is not None:
        raise PromptTooLongError(
            f"max_new_tokens: prompt + max_new_tokens ({length} tokens) exceeds the model's context of "
            f"{limit} tokens, and its {scaling_type(dict(config.rope_scaling))!r} RoPE cannot be stretched further")
    return (("factor", length / limit), ("original_max_position_embeddings", limit), ("rope_type", "yarn"))


def rope_tables(config, scaling: tuple | None, length: int) -> RopeTables:
    """The tables of `config` under `scaling` (see `run_scaling`) for sequences of `length`; the
    scaling's type is one of ROPE_TYPES, which `ModelConfig` checks when it is made."""
    dim = config.rotary_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = dict(scaling or ())
    kind = scaling_type(scaling)
    attention_factor = 1.0
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        inv_freq = _llama3(inv_freq, scaling)
    elif kind == "yarn":
        inv_freq, attention_factor = _yarn(inv_freq, scaling, config)
    elif kind == "longrope":
        inv_freq, attention_factor = _longrope(inv_freq, scaling, config, length)
    elif kind == "frequency_factors":  # llama.cpp's rope_freqs: per-frequency divisors
        inv_freq = inv_freq / np.asarray(scaling["factors"], np.float64)
    return RopeTables(inv_freq.astype(np.float32), float(attention_factor))


def _llama3(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between."""
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return np.where(wavelength > original / low, inv_freq / factor,
                    np.where(wavelength < original / high, inv_freq, blended))


def _yarn(inv_freq: np.ndarray, scaling: dict, config) -> tuple[np.ndarray, float]:
    """YaRN: frequencies that turn fewer than `beta_slow` times over the original context are
    interpolated (divided by `factor`), those turning more than `beta_fast` times kept, a linear
    ramp between; attention scaled by 0.1 ln(factor) + 1 unless the config says otherwise."""
    original = float(scaling.get("original_max_position_embeddings") or config.max_position_embeddings)
    factor = float(scaling.get("factor") or config.max_position_embeddings / original)
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
                            if mscale and mscale_all_dim else _yarn_mscale(factor))
    dim, base = config.rotary_dim, config.rope_theta

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(scaling.get("beta_fast") or 32), correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / ((high - low) or 0.001), 0, 1)
    extrapolated = 1 - ramp
    return inv_freq / factor * (1 - extrapolated) + inv_freq * extrapolated, float(attention_factor)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _longrope(inv_freq: np.ndarray, scaling: dict, config, length: int) -> tuple[np.ndarray, float]:
    """LongRoPE: frequencies divided by `long_factor` for a sequence longer than the original
    context, by `short_factor` otherwise; attention scaled by sqrt(1 + ln(s) / ln(original)),
    s = max_position_embeddings / original, at every length."""
    original = int(scaling["original_max_position_embeddings"])
    factor = scaling.get("factor") or config.max_position_embeddings / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    factors = scaling["long_factor"] if length > original else scaling["short_factor"]
    if len(factors) != len(inv_freq):
        raise UnsupportedModelError(f"rope_scaling: {len(factors)} LongRoPE factors for {len(inv_freq)} frequencies")
    return inv_freq / np.asarray(factors, np.float64), float(attention_factor)
