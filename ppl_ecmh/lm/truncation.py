"""Top-k truncation as a language model: the k most likely next tokens, renormalized.

Wrapping the model (rather than the samplers) truncates everything consistently: the target
p_k(x)^alpha, the proposal softmax(log p_k / tau), the entropies the cuts read, and the scores of
`teacher_force` and of the NumPyro model's log density all come from the same truncated logits.
The published code samples with top_k = 50; the exact default is no truncation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TopK:
    lm: Any
    k: int = dataclasses.field(metadata=dict(static=True))

    def __post_init__(self):
        if not 0 < self.k <= self.lm.vocab_size:
            raise ValueError(f"top_k: must be in 1..{self.lm.vocab_size}, got {self.k}")

    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.lm.eos_token_ids

    @property
    def max_length(self) -> int:
        return self.lm.max_length

    def init_cache(self, batch_size: int, length: int):
        return self.lm.init_cache(batch_size, length)

    def within(self, span: int | None) -> "TopK":
        return dataclasses.replace(self, lm=self.lm.within(span))

    def forward(self, cache, tokens, positions):
        logits, cache = self.lm.forward(cache, tokens, positions)
        kth = jax.lax.top_k(logits, self.k)[0][..., -1:]
        return jnp.where(logits >= kth, logits, -jnp.inf), cache


def truncate(lm, top_k: int | None):
    """`lm` itself for top_k None (exact), else its top-k truncation."""
    return lm if top_k is None else TopK(lm, int(top_k))
