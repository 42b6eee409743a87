"""Figures of an evaluation: accuracy with intervals, pass@k curves, accuracy against cost."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def accuracy_intervals(table: pd.DataFrame):
    """Accuracy of each sampler with its 95% interval, one row per sampler."""
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(table) + 1.4))
    positions = range(len(table))
    axis.errorbar(table["accuracy"], positions, xerr=_error_bars(table), fmt="o", capsize=4, color="C0")
    axis.set_yticks(list(positions), table["sampler"])
    axis.set_ylim(len(table) - 0.5, -0.5)  # first sampler on top, half a row of margin
    axis.set_xlim(0, 1)
    axis.set_xlabel(f"accuracy (95% interval over {int(table['problems'].max())} problems)")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def _error_bars(table: pd.DataFrame) -> np.ndarray:
    """Distances from the accuracy to its interval ends (rounding can put an end a hair past it)."""
    return np.clip([table["accuracy"] - table["ci_low"], table["ci_high"] - table["accuracy"]], 0, None)


def pass_at_k_curves(passes: pd.DataFrame):
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for sampler, group in passes.groupby("sampler", sort=False):
        axis.plot(group["k"], group["pass_at_k"], marker="o", label=sampler)
    return _finish(figure, axis, "k (completions per problem)", "pass@k (unbiased estimate)")


def accuracy_against_cost(table: pd.DataFrame):
    """Where each sampler sits between tokens spent and accuracy reached."""
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for index, row in table.reset_index(drop=True).iterrows():
        axis.errorbar(row["tokens_per_problem"], row["accuracy"], fmt="o", color=f"C{index}", capsize=3,
                      yerr=_error_bars(table.iloc[[index]]), label=row["sampler"])
    # a factor of two either side and plain-number labels: 1-2-5 ticks across decades, and within one
    # decade the locator's linear fallback (50-token steps), so close costs still get readable labels
    tokens = table["tokens_per_problem"]
    axis.set_xscale("log")
    axis.set_xlim(tokens.min() / 2, tokens.max() * 2)
    axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    return _finish(figure, axis, "tokens generated per problem (log scale)", "accuracy")


def _finish(figure, axis, xlabel: str, ylabel: str):
    """Labels, a [0, 1] y axis for rates, a legend of the samplers and a light grid."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
