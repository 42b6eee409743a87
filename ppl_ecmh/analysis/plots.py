"""Figures of runs, drawn from InferenceData (see `diagnostics`); each function returns a Figure."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ppl_ecmh.analysis import diagnostics  # noqa: E402


def log_target_trace(idata, title: str = ""):
    """Trace and per-chain density of alpha * log p(x), ArviZ's own trace plot."""
    az = diagnostics.import_arviz()
    with warnings.catch_warnings():  # a chain that never moved has no density to estimate: expected
        warnings.filterwarnings("ignore", "Your data appears to have a single value", UserWarning)
        axes = az.plot_trace(idata, var_names=["log_target"], compact=False, figsize=(9, 2.6))
    figure = axes.ravel()[0].figure
    figure.suptitle(title or "alpha * log p(x) per chain")
    figure.tight_layout()
    return figure


def _relative_cut(idata) -> tuple[np.ndarray, np.ndarray]:
    """Cut / current length and accepted, over every MH step (steps with an empty old suffix excluded)."""
    stats = idata.sample_stats
    old_length = (stats["cut"] + stats["old_suffix_length"]).values.ravel()
    moved = old_length > 0
    return stats["cut"].values.ravel()[moved] / old_length[moved], stats["accepted"].values.ravel()[moved]


def acceptance_by_cut(idata, bins: int = 8):
    """Acceptance rate against the relative cut position, with binomial standard errors."""
    relative, accepted = _relative_cut(idata)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(relative, edges) - 1, 0, bins - 1)
    figure, ax = plt.subplots(figsize=(5, 3.2))
    centers, rates, errors = [], [], []
    for b in range(bins):
        inside = accepted[which == b]
        if inside.size:
            rate = inside.mean()
            centers.append((edges[b] + edges[b + 1]) / 2)
            rates.append(rate)
            errors.append(np.sqrt(max(rate * (1 - rate), 1e-12) / inside.size))
    ax.errorbar(centers, rates, yerr=errors, marker="o", capsize=3)
    ax.set_xlabel("cut position / completion length")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("acceptance against cut position")
    figure.tight_layout()
    return figure


def entropy_profile(idata, chain: int = 0, draw: int = -1):
    """One completion's next-token entropy per position, with the chain's cut positions marked."""
    entropy = idata.completions["entropy"].values[chain, draw]
    length = int(idata.posterior["length"].values[chain, draw])
    cuts = idata.sample_stats["cut"].values[chain]
    figure, ax = plt.subplots(figsize=(8, 3))
    ax.plot(np.arange(length), entropy[:length], color="C0", label="entropy H of p(. | prefix)")
    counts = np.bincount(cuts[cuts < length], minlength=length)[:length]
    if counts.any():
        ax2 = ax.twinx()
        ax2.bar(np.arange(length), counts, color="C3", alpha=0.35, label="cuts made by the chain")
        ax2.set_ylabel("cuts", color="C3")
    ax.set_xlabel("completion position")
    ax.set_ylabel("entropy (nats)")
    ax.set_title(f"entropy profile of chain {chain}, draw {draw % idata.posterior.sizes['draw']}")
    figure.tight_layout()
    return figure


def cut_distribution(runs: dict):
    """Histogram of relative cut positions for each run (name -> InferenceData)."""
    figure, ax = plt.subplots(figsize=(5, 3.2))
    for name, idata in runs.items():
        relative, _ = _relative_cut(idata)
        if relative.size and (relative > 0).any():
            ax.hist(relative, bins=np.linspace(0, 1, 11), histtype="step", density=True, linewidth=2, label=name)
    ax.set_xlabel("cut position / completion length")
    ax.set_ylabel("density")
    ax.set_title("where the samplers cut")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def kernel_comparison(runs: dict, rng_seed: int = 0):
    """ESS of alpha log p per 1,000 generated tokens (bootstrap over chains, 90% interval; "n/a"
    and no bar where it is not estimable) and acceptance rate (95% normal interval over steps)."""
    rng = np.random.default_rng(rng_seed)
    names = list(runs)
    ess, ess_low, ess_high, acc, acc_err = [], [], [], [], []
    for name in names:
        idata = runs[name]
        values = idata.posterior["log_target"].values
        per_1k = 1000 / max(diagnostics.total_tokens(idata), 1)
        point = diagnostics.ess(values).value * per_1k
        chains = values.shape[0]
        boots = [diagnostics.ess(values[rng.integers(0, chains, chains)]).value * per_1k
                 for _ in range(200)] if chains > 1 and np.isfinite(point) else [point]
        boots = [b for b in boots if np.isfinite(b)] or [point]
        ess.append(point)
        ess_low.append(max(point - np.quantile(boots, 0.05), 0) if np.isfinite(point) else 0)
        ess_high.append(max(np.quantile(boots, 0.95) - point, 0) if np.isfinite(point) else 0)
        accepted = idata.sample_stats["accepted"].values.ravel()
        acc.append(accepted.mean())
        acc_err.append(1.96 * np.sqrt(max(accepted.mean() * (1 - accepted.mean()), 1e-12) / accepted.size))
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    positions = np.arange(len(names))
    left.bar(positions, np.nan_to_num(ess), yerr=[ess_low, ess_high], capsize=4, color="C0")
    for position, value in zip(positions, ess):
        if not np.isfinite(value):
            left.text(position, 0, "n/a", ha="center", va="bottom", fontsize=8)
    left.set_ylabel("bulk ESS per 1k tokens")
    right.bar(positions, acc, yerr=acc_err, capsize=4, color="C1")
    right.set_ylabel("acceptance rate")
    right.set_ylim(0, 1.05)
    for ax in (left, right):
        ax.set_xticks(positions, names, rotation=20, ha="right", fontsize=8)
    figure.suptitle("kernel comparison")
    figure.tight_layout()
    return figure
