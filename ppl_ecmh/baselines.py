"""Baselines with the samplers' interface: each step draws a fresh, independent completion.

Ancestral sampling (tau = 1) is exact for p, so it is exact for pi_alpha only at alpha = 1.
Per-token low-temperature sampling (tau = 1/alpha) sharpens each conditional, not the joint: it is
NOT pi_alpha (DESIGN section 1) and serves as the baseline the MH kernels are measured against.
Compute-matched best-of-N spends a given token budget on such draws and keeps the likeliest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl_ecmh.engine.schedule import best_of_n_score
from ppl_ecmh.lm.generation import extend, sequence_log_prob
from ppl_ecmh.mh import SuffixMHInfo, SuffixMHState, select_rows


def independent_step(rng_key, state: SuffixMHState, lm, *, tau, alpha, limit, active=None):
    """Replace every active row by a new draw from the model at temperature tau (always 'accepted')."""
    seqs = state.seqs
    active = jnp.ones_like(seqs.length, bool) if active is None else active
    keep = jnp.where(active, 0, seqs.length)
    new, cache = extend(lm, rng_key, seqs, state.cache, keep, jnp.where(active, limit, keep), tau)
    info = SuffixMHInfo(
        accepted=active,
        accept_prob=active.astype(jnp.float32),
        cut=jnp.zeros_like(seqs.length),
        old_suffix_length=jnp.where(active, seqs.length, 0),
        new_suffix_length=jnp.where(active, new.length, 0),
        num_generated=jnp.where(active, new.length, 0),
        log_target=alpha * sequence_log_prob(new),
    )
    return SuffixMHState(new, cache), info


def best_of_n(rng_key, state: SuffixMHState, lm, *, tau, budget, limit):
    """Compute-matched best-of-N: draw completions at temperature tau, one after another per row,
    until `budget` [B] tokens are spent, and keep the one with the highest mean log p.

    No row decodes more than its budget: the last candidate is capped at what remains. Candidates
    cut short by that cap are kept only if no candidate finished (EOS or `limit`). Returns the best
    candidate's state and the tokens spent [B]. The returned cache holds the prompts only.
    """
    seqs = state.seqs
    rows = seqs.length.shape[0]
    empty = seqs._replace(length=jnp.zeros(rows, jnp.int32))

    def round_(carry):
        key, cache, best, best_score, spent = carry
        key, draw_key = jax.random.split(key)
        active = spent < budget
        cap = jnp.where(active, jnp.minimum(limit, budget - spent), 0)
        candidate, cache = extend(lm, draw_key, empty, cache, jnp.zeros(rows, jnp.int32), cap, tau)
        score = best_of_n_score(lm, candidate, limit)
        better = active & (score > best_score)
        best = select_rows(better, candidate, best)
        return key, cache, best, jnp.where(better, score, best_score), spent + candidate.length

    start = (rng_key, state.cache, empty, jnp.full(rows, -jnp.inf), jnp.zeros(rows, jnp.int32))
    _, cache, best, _, spent = jax.lax.while_loop(lambda carry: jnp.any(carry[4] < budget), round_, start)
    return SuffixMHState(best, cache), spent
