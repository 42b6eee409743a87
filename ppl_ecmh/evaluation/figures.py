"""Figures of an evaluation: accuracy with intervals, pass@k curves, accuracy against cost, and
paired differences between samplers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def accuracy_intervals(table: pd.DataFrame):
    """Accuracy of each sampler with its 95% interval, one row per sampler."""
    figure, _ = _interval_rows(table["sampler"], table["accuracy"], table["ci_low"], table["ci_high"], (0, 1),
                               f"accuracy (95% interval over {int(table['problems'].max())} problems)")
    return figure


def paired_differences(pairs: pd.DataFrame):
    """Each paired accuracy difference with its bootstrap 95% interval against the line of no
    difference, and the Holm-adjusted McNemar p at the end of its row."""
    labels = [f"{first} - {second}" for first, second in zip(pairs["sampler"], pairs["versus"])]
    figure, axis = _interval_rows(labels, pairs["accuracy_difference"], pairs["ci_low"], pairs["ci_high"], (-1, 1),
                                  "paired accuracy difference (bootstrap 95% interval over problems)", width=9)
    axis.axvline(0, color="0.3", linewidth=1)
    right = axis.twinx()  # tick labels on the right, so the layout makes room for them
    right.set_ylim(axis.get_ylim())
    right.set_yticks(range(len(pairs)), [f"{count} pairs, Holm p {p_value:.2g}"
                                         for count, p_value in zip(pairs["pairs"], pairs["mcnemar_p_holm"])])
    figure.tight_layout()
    return figure


def _interval_rows(labels, values, lows, highs, xlim, xlabel: str, width: float = 7):
    """One labelled row per estimate with its interval, the first on top, and a light grid; the
    axis is labelled before the layout is fitted, so the label keeps its room."""
    figure, axis = plt.subplots(figsize=(width, 0.5 * len(values) + 1.4))
    positions = list(range(len(values)))
    axis.errorbar(values, positions, xerr=_error_bars(values, lows, highs), fmt="o", capsize=4, color="C0")
    axis.set_yticks(positions, list(labels))
    axis.set_ylim(len(values) - 0.5, -0.5)  # half a row of margin
    axis.set_xlim(*xlim)
    axis.set_xlabel(xlabel)
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure, axis


def _error_bars(values, lows, highs) -> np.ndarray:
    """Distances from an estimate to its interval ends (rounding can put an end a hair past it)."""
    values = np.asarray(values, float)
    return np.clip([values - np.asarray(lows, float), np.asarray(highs, float) - values], 0, None)


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
                      yerr=_error_bars([row["accuracy"]], [row["ci_low"]], [row["ci_high"]]),
                      label=row["sampler"])
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
