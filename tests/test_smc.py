"""Power-SMC: weighted particles estimate the enumerated pi_alpha, and a wrong weight update fails."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_ecmh.lm import generation, toy
from ppl_ecmh.samplers import smc
from tests.exact import REJECTION_MARGIN, SEEDS, tv_bound

PROBLEM = toy.random_tree_problem(seed=1)


def forgot_the_proposal(alpha, log_p, log_q):
    """A plausible bug: weighting by p^alpha alone, as if the particles came from p."""
    return alpha * log_p


@functools.cache
def weighted_estimates(alpha, num_particles, groups, seed, block_size=1, increment=smc.power_increment):
    """Per group: the SMC estimate of pi_alpha (normalized weights summed per completion), and the
    group's effective sample size at the last step."""
    rows = num_particles * groups
    seqs = generation.new_sequences([PROBLEM.prompt] * rows, PROBLEM.max_new_tokens)
    start = generation.Generated(seqs, generation.prefill(PROBLEM.lm, seqs))
    limit = jnp.full(rows, PROBLEM.max_new_tokens, jnp.int32)
    state, info = jax.jit(lambda key, start: smc.power_smc(
        key, start, PROBLEM.lm, num_particles=num_particles, alpha=alpha, tau=1.0 / alpha, limit=limit,
        block_size=block_size, increment=increment))(jax.random.split(jax.random.key(seed), groups), start)
    tokens = np.asarray(generation.completion_tokens(state.particles.seqs, -1))
    lengths = np.asarray(state.particles.seqs.length)
    weights = np.asarray(jax.nn.softmax(state.log_weights.reshape(groups, num_particles), axis=-1))
    estimates = []
    for group in range(groups):
        estimate = dict.fromkeys(PROBLEM.power_distribution(alpha), 0.0)
        for j in range(num_particles):
            row = group * num_particles + j
            estimate[tuple(int(t) for t in tokens[row, : lengths[row]])] += weights[group, j]
        estimates.append(estimate)
    return estimates, np.asarray(info.ess)[-1], info


def tv_and_bound(estimate, pi, effective_n):
    """TV of the estimate from pi, and the bound exact iid draws of size `effective_n` stay under."""
    exact = np.array([pi[x] for x in pi])
    tv = 0.5 * np.abs(np.array([estimate[x] for x in pi]) - exact).sum()
    return tv, tv_bound(exact, effective_n)


@pytest.mark.parametrize("alpha, block_size", [(2.0, 1), (4.0, 1), (4.0, 2)])
def test_weighted_particles_estimate_the_exact_power_distribution(alpha, block_size):
    for seed in SEEDS:
        (estimate,), ess, _ = weighted_estimates(alpha, 20000, 1, seed=seed, block_size=block_size)
        tv, bound = tv_and_bound(estimate, PROBLEM.power_distribution(alpha), ess[0])
        assert tv <= bound, f"seed {seed}: TV {tv:.4f} above the Monte-Carlo bound {bound:.4f} (ESS {ess[0]:.0f})"


@pytest.mark.parametrize("alpha", [2.0, 4.0])
def test_a_wrong_weight_update_is_detected(alpha):
    for seed in SEEDS:
        (estimate,), ess, _ = weighted_estimates(alpha, 20000, 1, seed=seed, increment=forgot_the_proposal)
        tv, bound = tv_and_bound(estimate, PROBLEM.power_distribution(alpha), ess[0])
        assert tv > REJECTION_MARGIN * bound, f"seed {seed}: wrong weights not rejected: TV {tv:.4f}, bound {bound:.4f}"


def test_groups_are_independent_particle_systems_that_each_estimate_pi():
    estimates, ess, info = weighted_estimates(4.0, 5000, 4, seed=1)
    pi = PROBLEM.power_distribution(4.0)
    for estimate, group_ess in zip(estimates, ess):
        tv, bound = tv_and_bound(estimate, pi, group_ess)
        assert tv <= bound
    assert info.ess.shape == (PROBLEM.max_new_tokens, 4) and info.num_generated.shape == (4,)
    assert np.all(np.asarray(info.num_generated) >= 5000)  # every particle decoded at least one token


def test_systematic_resampling_keeps_each_particle_in_proportion_to_its_weight():
    weights = np.array([[0.5, 0.25, 0.125, 0.125] * 4])
    counts = np.bincount(np.asarray(smc.systematic_resample(jax.random.split(jax.random.key(0), 1),
                                                             jnp.log(weights)))[0], minlength=16)
    expected = weights[0] * 16 / weights.sum()
    assert np.all(np.abs(counts - expected) < 1)  # systematic: within one of N * w


def test_a_groups_particles_depend_on_its_own_key_alone():
    """Keyed by group: the same key gives the same system whatever group stands beside it."""
    num_particles, keys = 8, jax.random.split(jax.random.key(3), 3)
    seqs = generation.new_sequences([PROBLEM.prompt] * 2 * num_particles, PROBLEM.max_new_tokens)
    start = generation.Generated(seqs, generation.prefill(PROBLEM.lm, seqs))
    limit = jnp.full(2 * num_particles, PROBLEM.max_new_tokens, jnp.int32)
    run = jax.jit(lambda keys: smc.power_smc(keys, start, PROBLEM.lm, num_particles=num_particles, alpha=4.0,
                                             tau=0.25, limit=limit)[0])
    beside_one, beside_two = run(keys[:2]), run(keys[jnp.array([0, 2])])
    first = slice(0, num_particles)
    np.testing.assert_array_equal(beside_one.particles.seqs.tokens[first], beside_two.particles.seqs.tokens[first])
    np.testing.assert_array_equal(beside_one.log_weights[first], beside_two.log_weights[first])
    assert not np.array_equal(beside_one.particles.seqs.tokens[num_particles:],
                              beside_two.particles.seqs.tokens[num_particles:])
