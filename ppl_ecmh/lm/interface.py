"""The language-model interface every sampler is written against.

A transformer (`ppl_ecmh.lm.transformer.Transformer`) and the enumerable toy models
(`ppl_ecmh.lm.toy.TabularLM`) both implement it, so the kernels cannot tell them apart. Models are
pytrees (weights are leaves) and are passed to jitted functions as arguments, never closed over:
closed-over arrays would be baked into the compiled program as constants.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax


class LanguageModel(Protocol):
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_length: int  # the context length, in tokens

    def init_cache(self, batch_size: int, length: int) -> Any:
        """An empty cache pytree for `length` positions; every leaf has the batch axis first."""

    def forward(self, cache: Any, tokens: jax.Array, positions: jax.Array) -> tuple[jax.Array, Any]:
        """Logits [B, T, V] (float32) for tokens [B, T] at positions [B, T], contiguous per row.

        Caches the given tokens at their positions and conditions each one on the cached tokens
        before it, so a row can restart from any earlier position of its own sequence.
        """

    def within(self, span: int | None) -> "LanguageModel":
        """This model for positions below `span` only (None: any position): the same logits, from
        a program whose loops have trip counts known when it is compiled (a transformer's attention
        reads the cache below `span`). A model with no such loop returns itself."""
