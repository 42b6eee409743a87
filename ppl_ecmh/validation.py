"""Checks of user-facing sampler parameters: ValueError naming the parameter, before any work."""

from __future__ import annotations

import math

from ppl_ecmh.errors import PromptTooLongError


MAX_ALPHA = 1000.0  # far past any sharpening in use (published: 4 to 5); larger ones overflow float32


def check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0 < alpha <= MAX_ALPHA):
        raise ValueError(f"alpha: must be a number in (0, {MAX_ALPHA:g}], got {alpha}")
    return alpha


def check_tau(tau, alpha: float) -> float:
    """The proposal temperature; None means the published default 1/alpha."""
    tau = 1.0 / alpha if tau is None else float(tau)
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau: must be a finite number > 0, got {tau}")
    return tau


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fits_context(lm, prompt_length: int, max_new_tokens: int) -> None:
    """PromptTooLongError (a ValueError) when prompt + completion exceed the model's context."""
    if prompt_length + max_new_tokens > lm.max_length:
        raise PromptTooLongError(
            f"max_new_tokens: prompt ({prompt_length} tokens) + max_new_tokens ({max_new_tokens}) "
            f"exceeds the model's context of {lm.max_length} tokens"
        )
