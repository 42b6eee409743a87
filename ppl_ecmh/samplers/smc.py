"""Power-SMC (arXiv 2602.10273): sequential Monte Carlo for pi_alpha, as pure functions.

N particles per group (a chain, or a problem) grow together from the proposal q (temperature
tau = 1/alpha), `block_size` tokens per step. The intermediate targets are p(x_1..x_t)^alpha, so a
step's incremental log weight is alpha * log p - log q of the tokens it added (zero for particles
that have ended). When a group's effective sample size falls below `ess_threshold * N`, the group
is resampled systematically (tokens, statistics and KV cache copied from the ancestors) and its
weights reset. The weighted particles estimate pi_alpha; `draw` returns one particle per group
picked by weight. Rows are group-major: particle j of group g is row g * N + j.

Randomness is per group: each group has a key of its own, and a group's particles, resampling and
draw come from it alone, so a group's result does not depend on which groups run beside it.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ppl_ecmh.lm.generation import Generated, ends_with_eos, extend, span_sum


class SMCState(NamedTuple):
    particles: Generated  # [G * N] rows
    log_weights: jax.Array  # [G * N], unnormalized


class SMCInfo(NamedTuple):
    ess: jax.Array  # [steps, G] effective sample size after each step's reweighting
    resampled: jax.Array  # [steps, G] whether the group was resampled after that step
    num_generated: jax.Array  # [G] tokens decoded by all of the group's particles


def power_increment(alpha, log_p, log_q):
    """log [p^alpha / q] of the tokens a step added: the exact Power-SMC weight update."""
    return alpha * log_p - log_q


def effective_sample_size(log_weights: jax.Array) -> jax.Array:
    """Kish's ESS of each group's weights [G, N] -> [G]."""
    weights = jax.nn.softmax(log_weights, axis=-1)
    return 1.0 / jnp.sum(weights**2, axis=-1)


def systematic_resample(keys, log_weights: jax.Array) -> jax.Array:
    """Ancestor indices [G, N] (within each group) by systematic resampling of weights [G, N],
    one key per group [G]."""
    groups, n = log_weights.shape
    cumulative = jnp.cumsum(jax.nn.softmax(log_weights, axis=-1), axis=-1)
    points = (jax.vmap(jax.random.uniform)(keys)[:, None] + jnp.arange(n)[None, :]) / n
    indices = jax.vmap(jnp.searchsorted)(cumulative, points)
    return jnp.minimum(indices, n - 1)


def particle_keys(keys, num_particles: int):
    """A key per particle [G * N] from a key per group [G] (group-major rows)."""
    per_group = jax.vmap(lambda key: jax.random.split(key, num_particles))(keys)
    return per_group.reshape((-1,) + per_group.shape[2:])


def power_smc(keys, particles: Generated, lm, *, num_particles: int, alpha, tau, limit,
              block_size: int = 1, ess_threshold: float = 0.5,
              increment: Callable = power_increment) -> tuple[SMCState, SMCInfo]:
    """Run SMC from `particles` (prompts cached, empty completions) until every particle has ended
    (EOS or `limit` [G * N] tokens), with a key per group [G]. `increment` is the weight update,
    replaceable only to test that a wrong one is detected."""
    rows = particles.seqs.length.shape[0]
    groups = rows // num_particles
    steps = math.ceil(particles.seqs.max_new_tokens / block_size)

    def step(carry, index):
        state, log_weights, generated = carry
        pairs = jax.vmap(lambda key: jax.random.split(jax.random.fold_in(key, index)))(keys)
        extend_keys, resample_keys = particle_keys(pairs[:, 0], num_particles), pairs[:, 1]
        seqs = state.seqs
        running = ~ends_with_eos(lm, seqs) & (seqs.length < limit)
        target = jnp.where(running, jnp.minimum(seqs.length + block_size, limit), seqs.length)
        grown, cache = extend(lm, extend_keys, seqs, state.cache, seqs.length, target, tau)
        added = (span_sum(grown.logp, seqs.length, grown.length), span_sum(grown.logq, seqs.length, grown.length))
        log_weights = log_weights + jnp.where(running, increment(alpha, *added), 0.0)
        generated = generated + (grown.length - seqs.length).reshape(groups, num_particles).sum(axis=1)
        grouped = log_weights.reshape(groups, num_particles)
        ess = effective_sample_size(grouped)
        resample = ess < ess_threshold * num_particles
        state = Generated(grown, cache)

        def resampled(operands):
            state, grouped = operands
            ancestors = systematic_resample(resample_keys, grouped)
            ancestors = jnp.where(resample[:, None], ancestors, jnp.arange(num_particles)[None, :])
            rows_from = (ancestors + num_particles * jnp.arange(groups)[:, None]).reshape(-1)
            return jax.tree.map(lambda leaf: leaf[rows_from], state), jnp.where(resample[:, None], 0.0, grouped)

        state, grouped = jax.lax.cond(jnp.any(resample), resampled, lambda operands: operands, (state, grouped))
        return (state, grouped.reshape(-1), generated), (ess, resample)

    start = (particles, jnp.zeros(rows), jnp.zeros(groups, jnp.int32))
    (state, log_weights, generated), (ess, resampled) = jax.lax.scan(step, start, jnp.arange(steps))
    return SMCState(state, log_weights), SMCInfo(ess, resampled, generated)


def draw(keys, state: SMCState, num_particles: int) -> jax.Array:
    """One particle per group, picked with probability proportional to its weight, with a key per
    group [G]: row indices [G]."""
    grouped = state.log_weights.reshape(-1, num_particles)
    picks = jax.vmap(jax.random.categorical)(keys, grouped)
    return picks + num_particles * jnp.arange(grouped.shape[0])
