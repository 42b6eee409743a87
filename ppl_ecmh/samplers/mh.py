"""The suffix-resampling Metropolis-Hastings ratio, the one place it is computed (DESIGN section 2).

A step (the engine runs them: `ppl_ecmh.engine.slots`) chooses a cut t ~ q_cut(. | x), regenerates
the suffix after t from the proposal (the base model at temperature tau) reusing the prefix's KV
cache, and accepts with

    log A = alpha [log p(y) - log p(x_>t)] + [log q(x_>t) - log q(y)] + [log q_cut(t|x') - log q_cut(t|x)]

using the whole current and proposed suffixes (no truncation to a common length). Every term is a
sum of per-token numbers recorded when the tokens were generated. The cut term is evaluated with
the cut distribution on both states, so it is exact for any cut distribution, not only for those
whose weights depend on the shared prefix alone.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppl_ecmh.lm.generation import Sequences, span_sum


def select_rows(mask: jax.Array, on_true, on_false):
    """Row-wise choice between two pytrees whose leaves all have the batch axis first."""

    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, on_true, on_false)


def cut_log_probs(cut, seqs: Sequences) -> jax.Array:
    """log q_cut(t | x) for every row, [B, T]."""
    return jax.vmap(cut.log_prob)(seqs.entropy, seqs.length)


class LogAcceptanceTerms(NamedTuple):
    """log A of DESIGN section 2 in its two parts, per row: the target against the proposal over
    the two suffixes, and the cut distribution's ratio between the two states."""

    target_over_proposal: jax.Array
    cut_ratio: jax.Array


def log_acceptance_terms(current: Sequences, proposed: Sequences, cut_position, cut, alpha) -> LogAcceptanceTerms:
    t = cut_position
    log_target_ratio = alpha * (
        span_sum(proposed.logp, t, proposed.length) - span_sum(current.logp, t, current.length)
    )
    log_proposal_ratio = span_sum(current.logq, t, current.length) - span_sum(
        proposed.logq, t, proposed.length
    )
    pick = lambda log_probs: jnp.take_along_axis(log_probs, t[:, None], axis=1)[:, 0]
    log_cut_ratio = pick(cut_log_probs(cut, proposed)) - pick(cut_log_probs(cut, current))
    return LogAcceptanceTerms(log_target_ratio + log_proposal_ratio, log_cut_ratio)


def log_acceptance(current: Sequences, proposed: Sequences, cut_position, cut, alpha, drop_cut_ratio=False):
    """log A for each row (the cut ratio can be dropped only to test that it matters)."""
    terms = log_acceptance_terms(current, proposed, cut_position, cut, alpha)
    return terms.target_over_proposal + (0.0 if drop_cut_ratio else terms.cut_ratio)
