"""Comparing MH kernels by how fast their chains mix, the way MCMC studies compare samplers.

Per target (a prompt) and kernel, from draws [chain, draw] of a functional and the tokens the
chains decoded: bulk ESS and the integrated autocorrelation time, ESS per 1,000 decoded tokens,
and the steps (and tokens) until the split R-hat of the draws so far falls below a threshold.
Across targets, paired: for two kernels the per-target ratio of a figure, its geometric mean with
a bootstrap interval over targets, and a Wilcoxon signed-rank p. A target whose figure is not
estimable for either kernel is listed with the reason, never dropped in silence. Nothing here
knows about language models: the study in `benchmarks/mixing.py` feeds it.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import numpy as np

from ppl_ecmh.analysis.diagnostics import MIN_DRAWS_RHAT, Estimate, ess, import_arviz, rhat

RHAT_TARGET = 1.05  # "converged enough to start keeping draws": the and common practice's bar


class Efficiency(NamedTuple):
    """How much one kernel's chains on one target tell about a functional, per token spent."""

    ess: Estimate  # bulk ESS of the kept draws
    iat: float  # integrated autocorrelation time in draws: draws / ESS (nan when ESS is not estimable)
    ess_per_1k_tokens: float  # nan when ESS is not estimable


def efficiency(draws, tokens: float) -> Efficiency:
    """Bulk ESS of `draws` [chain, draw], its autocorrelation time and its ESS per 1,000 of the
    `tokens` decoded to produce them."""
    draws = np.asarray(draws, dtype=float)
    estimate = ess(draws)
    if not estimate.estimable:
        return Efficiency(estimate, float("nan"), float("nan"))
    return Efficiency(estimate, draws.size / estimate.value, 1000.0 * estimate.value / tokens)


def steps_to_rhat(draws, threshold: float = RHAT_TARGET, min_steps: int = 10) -> int | None:
    """The number of steps n from which on the split R-hat of the chains' draws n//2 .. n-1 (the
    first half discarded as warm-up, as is usual) stays below `threshold` up to the last step; None
    if it is not below at the last step. "Stays" keeps an early dip of a few noisy draws from
    counting as convergence."""
    draws = np.asarray(draws, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # a window where a chain stood still: R-hat inf
        below = [(lambda e: e.estimable and e.value < threshold)(rhat(draws[:, steps // 2 : steps]))
                 for steps in range(min_steps, draws.shape[1] + 1)]
    if not below or not below[-1]:
        return None
    first = len(below) - int(np.argmin(below[::-1])) if not all(below) else 0
    return min_steps + first

def autocorrelation(draws, max_lag: int) -> np.ndarray:
    """The autocorrelation of `draws` [chain, draw] at lags 0..max_lag, averaged over chains (nan
    for a constant chain)."""
    draws = np.asarray(draws, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_chain = np.stack([import_arviz().autocorr(chain)[: max_lag + 1] for chain in draws])
    return np.nanmean(per_chain, axis=0) if np.isfinite(per_chain).any() else per_chain[0]


class PairedComparison(NamedTuple):
    """Kernel `kernel` against `baseline` on a figure, paired by target."""

    kernel: str
    baseline: str
    figure: str
    targets: int  # targets where both figures are estimable
    geometric_mean_ratio: float  # kernel / baseline
    interval: tuple[float, float]  # bootstrap percentile interval of the geometric mean, over targets
    wilcoxon_p: float  # two-sided signed-rank p of the log ratios (nan with fewer than 2 targets)
    wins: int  # targets where the kernel's figure is larger
    not_estimable: dict  # target -> why it was left out of the ratio


def paired_comparison(values: dict, kernel: str, baseline: str, figure: str, *, level: float = 0.95,
                      resamples: int = 10_000, seed: int = 0) -> PairedComparison:
    """Compare `values[kernel][target]` with `values[baseline][target]` ({kernel: {target: figure}},
    positive, nan where not estimable): per-target log ratios, their mean exponentiated (the
    geometric-mean ratio), a percentile bootstrap over targets, and scipy's Wilcoxon signed-rank
    test of the log ratios. Targets without both figures are listed in `not_estimable`."""
    from scipy import stats

    ours, theirs = values[kernel], values[baseline]
    common = [target for target in ours if target in theirs]
    usable, left_out = [], {}
    for target in common:
        a, b = float(ours[target]), float(theirs[target])
        if np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0:
            usable.append(np.log(a / b))
        else:
            left_out[target] = " and ".join(f"{name} {value}" for name, value in ((kernel, a), (baseline, b))
                                            if not (np.isfinite(value) and value > 0))
    logs = np.asarray(usable)
    if not len(logs):
        nan = float("nan")
        return PairedComparison(kernel, baseline, figure, 0, nan, (nan, nan), nan, 0, left_out)
    rng = np.random.default_rng(seed)
    means = logs[rng.integers(0, len(logs), size=(resamples, len(logs)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.exp(np.quantile(means, [tail, 1 - tail]))
    p = float(stats.wilcoxon(logs).pvalue) if len(logs) >= 2 and np.any(logs != 0) else float("nan")
    return PairedComparison(kernel, baseline, figure, len(logs), float(np.exp(logs.mean())), (float(low), float(high)),
                            p, int(np.sum(logs > 0)), left_out)


def all_pairs(values: dict, figure: str, kernels: Sequence[str], **options) -> list[PairedComparison]:
    """`paired_comparison` of every later kernel against every earlier one (the first is the baseline
    of the others)."""
    return [paired_comparison(values, kernel, baseline, figure, **options)
            for baseline, kernel in itertools.combinations(kernels, 2)]
