"""Suffix-resampling Metropolis-Hastings as pure functions over NamedTuple states (DESIGN section 2).

One step, for every row of a batch at once: choose a cut t ~ q_cut(. | x), regenerate the suffix
after t from the proposal (the base model at temperature tau) reusing the prefix's KV cache, and
accept with

    log A = alpha [log p(y) - log p(x_>t)] + [log q(x_>t) - log q(y)] + [log q_cut(t|x') - log q_cut(t|x)]

using the whole current and proposed suffixes (no truncation to a common length). Every term is a
sum of per-token numbers recorded when the tokens were generated. The cut term is evaluated with
the cut distribution on both states, so it is exact for any cut distribution, not only for those
whose weights depend on the shared prefix alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ppl_ecmh.lm.generation import Sequences, extend, prefill, sequence_log_prob, span_sum, teacher_force


class SuffixMHState(NamedTuple):
    seqs: Sequences  # tokens, lengths and per-token log p, log q, entropy of every row
    cache: Any  # the language model's cache for those tokens (KV cache, batch first)


class SuffixMHInfo(NamedTuple):
    accepted: jax.Array  # [B] bool
    accept_prob: jax.Array  # [B] min(1, exp(log A)); 0 for inactive rows
    cut: jax.Array  # [B] t, the number of kept completion tokens
    old_suffix_length: jax.Array  # [B] n - t
    new_suffix_length: jax.Array  # [B] n' - t
    num_generated: jax.Array  # [B] tokens decoded by this step
    log_target: jax.Array  # [B] alpha * log p(x) of the state after the step


def select_rows(mask: jax.Array, on_true, on_false):
    """Row-wise choice between two pytrees whose leaves all have the batch axis first."""

    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, on_true, on_false)


def cut_log_probs(cut, seqs: Sequences) -> jax.Array:
    """log q_cut(t | x) for every row, [B, T]."""
    return jax.vmap(cut.log_prob)(seqs.entropy, seqs.length)


def log_acceptance(current: Sequences, proposed: Sequences, cut_position, cut, alpha, drop_cut_ratio=False):
    """log A of DESIGN section 2 for each row (the cut ratio can be dropped only to test that it matters)."""
    t = cut_position
    log_target_ratio = alpha * (
        span_sum(proposed.logp, t, proposed.length) - span_sum(current.logp, t, current.length)
    )
    log_proposal_ratio = span_sum(current.logq, t, current.length) - span_sum(
        proposed.logq, t, proposed.length
    )
    pick = lambda log_probs: jnp.take_along_axis(log_probs, t[:, None], axis=1)[:, 0]
    log_cut_ratio = pick(cut_log_probs(cut, proposed)) - pick(cut_log_probs(cut, current))
    if drop_cut_ratio:
        log_cut_ratio = jnp.zeros_like(log_cut_ratio)
    return log_target_ratio + log_proposal_ratio + log_cut_ratio


def suffix_mh_step(
    rng_key, state: SuffixMHState, lm, *, cut, alpha, tau, limit, active=None, drop_cut_ratio=False
) -> tuple[SuffixMHState, SuffixMHInfo]:
    """One MH step on every row. `limit` [B]: completion length cap (T_max, or the block-wise stage
    cap); `active` [B]: rows to move (inactive rows keep their state and decode nothing).

    The model is an argument, never closed over, so jit does not compile its weights in as constants.
    """
    seqs = state.seqs
    batch = seqs.length.shape[0]
    active = jnp.ones(batch, bool) if active is None else active
    active = active & (seqs.length > 0)
    cut_key, proposal_key, accept_key = jax.random.split(rng_key, 3)

    t = jax.random.categorical(cut_key, cut_log_probs(cut, seqs)).astype(jnp.int32)
    t = jnp.where(active, t, seqs.length)
    proposed, proposed_cache = extend(
        lm, proposal_key, seqs, state.cache, t, jnp.where(active, limit, t), tau
    )
    log_a = log_acceptance(seqs, proposed, t, cut, alpha, drop_cut_ratio)
    log_a = jnp.where(active, log_a, -jnp.inf)
    accepted = jnp.log(jax.random.uniform(accept_key, (batch,))) < log_a
    new_state = select_rows(accepted, SuffixMHState(proposed, proposed_cache), state)
    info = SuffixMHInfo(
        accepted=accepted,
        accept_prob=jnp.exp(jnp.minimum(log_a, 0.0)),
        cut=t,
        old_suffix_length=jnp.where(active, seqs.length - t, 0),
        new_suffix_length=jnp.where(active, proposed.length - t, 0),
        num_generated=jnp.where(active, proposed.length - t, 0),
        log_target=alpha * sequence_log_prob(new_state.seqs),
    )
    return new_state, info


def init(rng_key, lm, seqs: Sequences, tau, limit=None) -> SuffixMHState:
    """Start every row from a draw of the proposal, as the published method does. `seqs` holds the
    prompts (`ppl_ecmh.lm.generation.new_sequences`)."""
    cache = prefill(lm, seqs)
    batch = seqs.length.shape[0]
    limit = jnp.full(batch, seqs.max_new_tokens, jnp.int32) if limit is None else limit
    seqs, cache = extend(lm, rng_key, seqs, cache, jnp.zeros(batch, jnp.int32), limit, tau)
    return SuffixMHState(seqs, cache)


def init_from_completions(lm, seqs: Sequences, completions: jax.Array, tau) -> SuffixMHState:
    """Start every row from a given completion [B, T] (scored in one forward pass)."""
    return SuffixMHState(*teacher_force(lm, seqs, completions, tau))
