"""Attention spans: how far a decode loop's attention reads, fixed when it is compiled.

A transformer's attention reads the cache in chunks up to the furthest live position
(`ppl_ecmh.lm.transformer`), so a decode step costs what the live tokens cost. XLA:GPU runs a
loop whose trip count it cannot know as a loop that waits on the host at every trip: one per
layer, each waiting chunks + 1 times per decode step. Over a span (`LanguageModel.within`) the
attention loops have trip counts known when compiled and nothing waits. The engine picks a span
per host trip; a lockstep decode loop (`generation.extend`) runs one loop per span, each until a
row would feed a position past it. The spans double, so few programs compile and attention reads
at most twice what the live positions need. A CPU has nothing to wait for and compiles one program
faster than several, so it keeps the loop up to the furthest position.
"""

from __future__ import annotations

import jax

from ppl_ecmh.lm import transformer


def attention_spans(cache_size: int) -> tuple[int, ...]:
    """The spans static attention picks from: doubling from two attention chunks, then the whole
    cache."""
    spans, span = [], 2 * transformer.ATTENTION_CHUNK
    while span < cache_size:
        spans.append(span)
        span *= 2
    return (*spans, cache_size)


def attention_span(cache_size: int, reach: int) -> int:
    """The smallest of `attention_spans(cache_size)` above position `reach` (the cache, at most)."""
    return next((span for span in attention_spans(cache_size) if span > reach), cache_size)


def static_attention_by_default() -> bool:
    """Whether decode loops attend over spans unless told: on any backend but the CPU."""
    return jax.default_backend() != "cpu"


def uses_static_attention(static_attention: bool | None) -> bool:
    """A loop's choice of static attention: as told, or (None) `static_attention_by_default()`;
    the engine and the lockstep loops decide alike."""
    return static_attention_by_default() if static_attention is None else static_attention


def decode_spans(cache_size: int, static_attention: bool | None) -> tuple[int | None, ...]:
    """The spans a lockstep decode loop runs over, one loop each, in order: `attention_spans` with
    static attention (`uses_static_attention`), else one loop with no span."""
    return attention_spans(cache_size) if uses_static_attention(static_attention) else (None,)
