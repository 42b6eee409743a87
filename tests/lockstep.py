"""Lockstep references of the per-chain samplers: every row of a batch steps together, each step
waiting for its longest proposal. The library runs these samplers on the engine
(`ppl_ecmh.engine`); these small references, built on the same MH ratio
(`ppl_ecmh.samplers.mh.log_acceptance`) and the same generation loop, let the exactness suite check the
mathematics apart from the engine's bookkeeping, and serve tests that need a sampler state of
rows (Power-SMC's, TMC's, best-of-N's peers).

The block-wise schedule of the published recipe grows the sample B tokens at a time and after each
block runs N_MCMC suffix-MH steps whose target is pi_alpha restricted to the tokens so far. It
stops a row as soon as its sample ends with EOS, which is not exact for pi_alpha when alpha > 1
(test_exactness measures this); `stop_at_eos=False` keeps ended rows in every later stage's MH steps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppl_ecmh.engine.schedule import best_of_n_score
from ppl_ecmh.lm.generation import Generated, Sequences, ends_with_eos, extend, prefill, sequence_log_prob, teacher_force
from ppl_ecmh.samplers.mh import cut_log_probs, log_acceptance, select_rows

SuffixMHState = Generated


class SuffixMHInfo(NamedTuple):
    accepted: jax.Array  # [B] bool
    accept_prob: jax.Array  # [B] min(1, exp(log A)); 0 for inactive rows
    cut: jax.Array  # [B] t, the number of kept completion tokens
    old_suffix_length: jax.Array  # [B] n - t
    new_suffix_length: jax.Array  # [B] n' - t
    num_generated: jax.Array  # [B] tokens decoded by this step
    log_target: jax.Array  # [B] alpha * log p(x) of the state after the step


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


class BlockInfo(NamedTuple):
    extension_generated: jax.Array  # [..., B] tokens decoded by the block's extension
    mh: SuffixMHInfo  # leaves [..., N_MCMC, B]


def run_block(rng_key, state: SuffixMHState, lm, *, cut, alpha, tau, limit, num_mcmc_steps, extend_rows, mh_rows):
    """Extend `extend_rows` (unless they end with EOS) up to `limit` tokens, then run
    `num_mcmc_steps` MH steps on `mh_rows` with completions capped at `limit`."""
    extension_key, mh_key = jax.random.split(rng_key)
    seqs = state.seqs
    grow = extend_rows & ~ends_with_eos(lm, seqs) & (seqs.length < limit)
    grown, cache = extend(lm, extension_key, seqs, state.cache, seqs.length, jnp.where(grow, limit, seqs.length), tau)

    def mh_step(state, key):
        return suffix_mh_step(key, state, lm, cut=cut, alpha=alpha, tau=tau, limit=limit, active=mh_rows)

    state, mh_info = jax.lax.scan(mh_step, SuffixMHState(grown, cache), jax.random.split(mh_key, num_mcmc_steps))
    return state, BlockInfo(grown.length - seqs.length, mh_info)


def blockwise_sample(
    rng_key, state: SuffixMHState, lm, *, cut, alpha, tau, block_size: int, num_mcmc_steps: int, stop_at_eos=True
):
    """Run the whole schedule from prompts (`state` from `prefill`, empty completions).

    Returns the final state and BlockInfo with leaves [num_blocks, ...]. With `stop_at_eos` (the
    published recipe) a row that has ended decodes nothing more and is inactive in the info.
    """
    total = state.seqs.max_new_tokens
    batch = state.seqs.length.shape[0]

    def block(state, inputs):
        index, key = inputs
        limit = jnp.full(batch, jnp.minimum((index + 1) * block_size, total), jnp.int32)
        running = ~ends_with_eos(lm, state.seqs) & (state.seqs.length < total)
        return run_block(
            key, state, lm, cut=cut, alpha=alpha, tau=tau, limit=limit, num_mcmc_steps=num_mcmc_steps,
            extend_rows=running, mh_rows=running if stop_at_eos else jnp.ones_like(running),
        )

    blocks = math.ceil(total / block_size)
    return jax.lax.scan(block, state, (jnp.arange(blocks), jax.random.split(rng_key, blocks)))


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
