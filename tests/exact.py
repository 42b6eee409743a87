"""Helpers for exactness tests on enumerable toy models: run many chains, compare with exact pi."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from ppl_ecmh.lm import generation
from tests import lockstep


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


def chains_from_exact(problem, alpha, step_fn, num_chains=20000, num_steps=8, seed=0, tau=None):
    """Start num_chains chains at exact pi_alpha draws, run num_steps steps, return final draws.

    A kernel that leaves pi_alpha invariant returns exact pi_alpha draws, whatever its mixing.
    """
    completions, pi = exact_draws(problem, alpha, num_chains, seed)
    seqs = generation.new_sequences([problem.prompt] * num_chains, problem.max_new_tokens)
    state = lockstep.init_from_completions(problem.lm, seqs, completions, 1.0 / alpha if tau is None else tau)
    limit = jnp.full(num_chains, problem.max_new_tokens, jnp.int32)
    state, acceptance = run_steps(jax.random.key(seed), state, problem.lm, alpha, limit, step_fn, num_steps)
    return final_draws(state.seqs), pi, float(acceptance.mean())


# Every exactness verdict is taken at each of these seeds, and must be the same at all of them.
SEEDS = range(5)
# Tail probability of each check under a correct kernel: the suite makes a few hundred, so a correct
# kernel fails one of them with probability well under 1%.
LEVEL = 1e-5
# A wrong kernel is rejected decisively: its TV at least this many times the bound, at every seed.
REJECTION_MARGIN = 2.0


class Comparison:
    """Empirical against exact distribution: total variation with a Monte Carlo bound, and chi-square.

    `draws` are completions, one per independent chain (iid under a correct kernel), or a list per
    chain of consecutive draws: then the Monte Carlo error is that of the effective sample size, the
    smallest ESS of the indicators of the completions (ArviZ, over the chains), not the number of
    draws. The bound is the TV that exact draws of that effective size stay under with probability
    1 - LEVEL (Gaussian tail at 4.26 sd of a simulated null); chi-square uses counts scaled to it.
    """

    def __init__(self, draws, pi: dict, seed: int = 12345):
        support = list(pi)
        chains = draws if draws and isinstance(draws[0], list) else None
        pooled = [x for chain in chains for x in chain] if chains else list(draws)
        unknown = set(pooled) - set(support)
        assert not unknown, f"draws outside the support: {sorted(unknown)[:3]}"
        counts = dict.fromkeys(support, 0)
        for x in pooled:
            counts[x] += 1
        n = len(pooled)
        self.effective_n = _effective_size(chains, support, pi) if chains else float(n)
        self.observed = np.array([counts[x] for x in support], float)
        probs = np.array([pi[x] for x in support])
        self.tv = 0.5 * np.abs(self.observed / n - probs).sum()
        self.tv_bound = tv_bound(probs, self.effective_n, seed)
        scale = self.effective_n / n
        self.chi2_pvalue = _chi_square_pvalue(self.observed * scale, probs * self.effective_n)

    def consistent(self) -> bool:
        return self.tv <= self.tv_bound and self.chi2_pvalue > LEVEL

    def rejected(self) -> bool:
        """Decisively not pi: TV beyond REJECTION_MARGIN bounds and chi-square below the level."""
        return self.tv > REJECTION_MARGIN * self.tv_bound and self.chi2_pvalue < LEVEL

    def __repr__(self):
        return f"TV={self.tv:.4f} (bound {self.tv_bound:.4f}, n_eff {self.effective_n:.0f}), chi2 p={self.chi2_pvalue:.3g}"


def tv_bound(probs: np.ndarray, effective_n: float, seed: int = 12345) -> float:
    """The TV from `probs` that `effective_n` exact draws stay under with probability 1 - LEVEL:
    a Gaussian tail (4.26 sd) over 4,000 simulated multinomial nulls."""
    rng = np.random.default_rng(seed)
    size = max(int(round(effective_n)), 1)
    null = 0.5 * np.abs(rng.multinomial(size, probs, size=4000) / size - probs).sum(axis=1)
    return float(null.mean() + stats.norm.isf(LEVEL) * null.std())


def _effective_size(chains, support, pi, min_expected: float = 50.0) -> float:
    """The smallest ESS over the indicators of the completions expected at least `min_expected`
    times (rarer ones have unstable ESS estimates), capped at the number of draws."""
    from ppl_ecmh.analysis import diagnostics

    index = {x: i for i, x in enumerate(support)}
    states = np.array([[index[x] for x in chain] for chain in chains])  # [chain, draw]
    sizes = [diagnostics.ess((states == index[x]).astype(float), "mean", keep_floor=True).value
             for x in support if pi[x] * states.size >= min_expected]
    sizes = [size for size in sizes if np.isfinite(size)]
    return float(min(sizes + [states.size]))


# Every multi-seed verdict of the session by test, for the summary pytest prints at the end.
VERDICTS: dict[str, tuple[str, list]] = {}


def verdicts(run, expected: str, label: str = "") -> list:
    """`run(seed) -> Comparison` at every seed of SEEDS, recorded under the running test's id."""
    comparisons = [run(seed) for seed in SEEDS]
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    VERDICTS[f"{test} {label}".strip()] = (expected, comparisons)
    return comparisons


def assert_exact_at_every_seed(run, label: str = "") -> list:
    comparisons = verdicts(run, "consistent", label)
    assert all(c.consistent() for c in comparisons), f"{label} not consistent at every seed: {comparisons}"
    return comparisons


def assert_rejected_at_every_seed(run, label: str = "") -> list:
    comparisons = verdicts(run, "rejected", label)
    assert all(c.rejected() for c in comparisons), f"wrong kernel {label} not rejected at every seed: {comparisons}"
    return comparisons


def _chi_square_pvalue(observed, expected, min_expected: float = 5.0) -> float:
    """Chi-square goodness of fit with the cells expected below `min_expected` pooled into one."""
    small = expected < min_expected
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return float(stats.chisquare(observed, expected).pvalue)
