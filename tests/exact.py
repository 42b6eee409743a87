"""Helpers for exactness tests on enumerable toy models: run many chains, compare with exact pi."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from ppl_ecmh import mh
from ppl_ecmh.lm import generation


def exact_draws(problem, alpha: float, num: int, seed: int) -> tuple[jax.Array, dict]:
    """`num` completions drawn from the exact pi_alpha, as a [num, T] array padded with EOS."""
    pi = problem.power_distribution(alpha)
    support = list(pi)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(support), size=num, p=np.array([pi[x] for x in support]))
    completions = np.full((num, problem.max_new_tokens), problem.lm.eos_token_ids[0], np.int32)
    for row, pick in enumerate(picks):
        completions[row, : len(support[pick])] = support[pick]
    return jnp.asarray(completions), pi


def final_draws(seqs) -> list[tuple[int, ...]]:
    tokens = np.asarray(generation.completion_tokens(seqs, -1))
    lengths = np.asarray(seqs.length)
    return [tuple(int(v) for v in tokens[row, : lengths[row]]) for row in range(len(lengths))]


@functools.partial(jax.jit, static_argnames=("step_fn", "num_steps"))
def run_steps(rng_key, state, lm, alpha, limit, step_fn, num_steps):
    """num_steps steps of `step_fn(key, state, lm, alpha, limit) -> (state, info)`; alpha is traced."""

    def body(state, key):
        state, info = step_fn(key, state, lm, alpha, limit)
        return state, info.accepted.mean()

    return jax.lax.scan(body, state, jax.random.split(rng_key, num_steps))


def chains_from_exact(problem, alpha, step_fn, num_chains=4000, num_steps=8, seed=0, tau=None):
    """Start num_chains chains at exact pi_alpha draws, run num_steps steps, return final draws.

    A kernel that leaves pi_alpha invariant returns exact pi_alpha draws, whatever its mixing.
    """
    completions, pi = exact_draws(problem, alpha, num_chains, seed)
    seqs = generation.new_sequences([problem.prompt] * num_chains, problem.max_new_tokens)
    state = mh.init_from_completions(problem.lm, seqs, completions, 1.0 / alpha if tau is None else tau)
    limit = jnp.full(num_chains, problem.max_new_tokens, jnp.int32)
    state, acceptance = run_steps(jax.random.key(seed), state, problem.lm, alpha, limit, step_fn, num_steps)
    return final_draws(state.seqs), pi, float(acceptance.mean())


class Comparison:
    """Empirical vs exact distribution: total variation with a Monte-Carlo bound, and chi-square."""

    def __init__(self, draws, pi: dict, bound_quantile: float = 0.999, seed: int = 12345):
        support = list(pi)
        unknown = set(draws) - set(support)
        assert not unknown, f"draws outside the support: {sorted(unknown)[:3]}"
        counts = dict.fromkeys(support, 0)
        for x in draws:
            counts[x] += 1
        n = len(draws)
        self.observed = np.array([counts[x] for x in support], float)
        self.expected = np.array([pi[x] for x in support]) * n
        self.tv = 0.5 * np.abs(self.observed - self.expected).sum() / n
        # the TV of n exact iid draws, simulated: the bound a correct sampler stays under
        rng = np.random.default_rng(seed)
        probs = self.expected / n
        null = 0.5 * np.abs(rng.multinomial(n, probs, size=2000) / n - probs).sum(axis=1)
        self.tv_bound = float(np.quantile(null, bound_quantile))
        self.chi2_pvalue = _chi_square_pvalue(self.observed, self.expected)

    def consistent(self, alpha_level: float = 0.01) -> bool:
        return self.tv <= self.tv_bound and self.chi2_pvalue > alpha_level

    def __repr__(self):
        return f"TV={self.tv:.4f} (bound {self.tv_bound:.4f}), chi2 p={self.chi2_pvalue:.3g}"


def _chi_square_pvalue(observed, expected, min_expected: float = 5.0) -> float:
    """Chi-square goodness of fit with the cells expected below `min_expected` pooled into one."""
    small = expected < min_expected
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return float(stats.chisquare(observed, expected).pvalue)
