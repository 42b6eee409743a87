"""The block-wise (autoregressive) schedule of the published recipe (DESIGN section 3).

Grow the sample B tokens at a time from the proposal, and after each block run N_MCMC suffix-MH
steps whose target is pi_alpha restricted to the tokens generated so far (completions capped at
k*B tokens; cuts over the whole current sequence).

The published recipe stops a row as soon as its sample ends with EOS. That row then keeps a draw
of an intermediate target (completions capped at k*B tokens), which over-weights short
completions when alpha > 1: the early stop is not exact for pi_alpha (tests/test_exactness.py
measures this). `stop_at_eos=False` keeps ended rows in the MH steps of every later stage, so the
final stage is an MH chain on pi_alpha itself.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppl_ecmh.lm.generation import ends_with_eos, extend
from ppl_ecmh.mh import SuffixMHInfo, SuffixMHState, suffix_mh_step

DEFAULTS = dict(alpha=4.0, block_size=192, num_mcmc_steps=10, max_new_tokens=3072)


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


def num_blocks(max_new_tokens: int, block_size: int) -> int:
    return math.ceil(max_new_tokens / block_size)


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

    blocks = num_blocks(total, block_size)
    return jax.lax.scan(block, state, (jnp.arange(blocks), jax.random.split(rng_key, blocks)))
