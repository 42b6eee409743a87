"""Scalable power sampling (TMC): what it reduces to, that it reaches pi_alpha, and its jackknife."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_ecmh.lm import generation, toy
from ppl_ecmh.runner import SamplerSpec, run_sampler
from ppl_ecmh.samplers import tmc
from tests.exact import SEEDS, Comparison, assert_exact_at_every_seed, assert_rejected_at_every_seed, final_draws

PROBLEM = toy.random_tree_problem(seed=1)
ALPHA = 2.0


@functools.cache
def tmc_draws(num_candidates, num_rollouts, horizon, rows=4000, seed=0):
    seqs = generation.new_sequences([PROBLEM.prompt] * rows, PROBLEM.max_new_tokens)
    state = generation.Generated(seqs, generation.prefill(PROBLEM.lm, seqs))
    limit = jnp.full(rows, PROBLEM.max_new_tokens, jnp.int32)
    new, info = jax.jit(lambda key, state: tmc.tmc_sample(
        key, state, PROBLEM.lm, alpha=ALPHA, tau=1.0 / ALPHA, limit=limit, num_candidates=num_candidates,
        num_rollouts=num_rollouts, horizon=horizon))(jax.random.split(jax.random.key(seed), rows), state)
    return final_draws(new.seqs), np.asarray(info.num_generated)


def low_temperature_distribution(problem, alpha, top_k):
    """Exact per-token low-temperature sampling restricted to the top_k tokens, by enumeration."""
    out = {}
    for completion, _ in problem.completions():
        log_q = 0.0
        for t, token in enumerate(completion):
            logits = alpha * np.asarray(problem.next_logits(problem.prompt + completion[:t]), np.float64)
            kept = np.argsort(logits)[-top_k:]
            if token not in kept:
                log_q = -np.inf
                break
            log_q += logits[token] - np.logaddexp.reduce(logits[kept])
        out[completion] = float(np.exp(log_q))
    return out


def test_one_rollout_and_horizon_zero_is_low_temperature_sampling_over_the_candidates():
    log_p = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
    exact = jax.nn.log_softmax(ALPHA * log_p, axis=-1)
    np.testing.assert_allclose(tmc.candidate_log_probs(log_p, jnp.zeros((1, 3, 1)), ALPHA), exact, rtol=1e-6)
    for top_k in (4, 2):
        low_temperature = low_temperature_distribution(PROBLEM, ALPHA, top_k)
        draws = {seed: tmc_draws(top_k, 1, 0, rows=40000, seed=seed)[0] for seed in SEEDS}
        assert_exact_at_every_seed(lambda seed: Comparison(draws[seed], low_temperature), f"top_k={top_k}")
        # which is not pi_alpha
        assert_rejected_at_every_seed(lambda seed: Comparison(draws[seed], PROBLEM.power_distribution(ALPHA)),
                                      f"top_k={top_k}")


def test_full_look_ahead_with_many_rollouts_samples_pi_alpha():
    def run(seed):
        draws, generated = tmc_draws(4, 64, PROBLEM.max_new_tokens - 1, seed=seed)
        assert generated.mean() > 64  # the rollouts are counted as decoded tokens
        return Comparison(draws, PROBLEM.power_distribution(ALPHA))

    assert_exact_at_every_seed(run)


def test_the_jackknife_removes_most_of_the_ratio_estimators_bias():
    """Log-normal future masses with known means: averaged over many replicates with 4 rollouts,
    the jackknife estimate is nearer the true candidate probabilities than the plain ratio."""
    rng = np.random.default_rng(0)
    p, mu, sigma = np.array([0.5, 0.3, 0.2]), np.array([0.0, 1.0, -0.5]), np.array([1.5, 1.0, 2.0])
    truth = p**ALPHA * np.exp(mu + sigma**2 / 2)
    truth /= truth.sum()
    samples = jnp.asarray(mu[None, :, None] + sigma[None, :, None] * rng.standard_normal((20000, 3, 4)))
    log_p = jnp.broadcast_to(jnp.log(p), (20000, 3))
    bias = {jackknife: np.abs(np.exp(np.asarray(tmc.candidate_log_probs(log_p, samples, ALPHA, jackknife))).mean(0)
                              - truth).sum() for jackknife in (False, True)}
    assert bias[True] < 0.7 * bias[False], bias


def test_tmc_runs_through_the_sampler_interface():
    run = run_sampler(PROBLEM.lm, PROBLEM.prompt, SamplerSpec("tmc", num_candidates=2, num_rollouts=2, horizon=1),
                      alpha=ALPHA, max_new_tokens=4, num_chains=2, num_draws=2, progress=False)
    assert run.settings["num_rollouts"] == 2 and run.settings["horizon"] == 1
    assert np.all(run.stats["num_generated"] >= run.stats["length"])
