"""The kernel-comparison statistics (`ppl_ecmh.evaluation.mixing`) and the mixing study's analysis
(`benchmarks.mixing`), on chains whose mixing is known: AR(1) draws, whose integrated
autocorrelation time is (1 + rho) / (1 - rho)."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import mixing as study
from ppl_ecmh.evaluation import mixing
from tests.chains import ar1

SEEDS = range(5)


def ess_per_1k(rng, rho: float, targets: int) -> dict:
    return {target: mixing.efficiency(ar1(rng, rho), tokens=8000.0).ess_per_1k_tokens for target in range(targets)}


def test_efficiency_recovers_the_autocorrelation_time_of_known_chains():
    rng = np.random.default_rng(0)
    for rho in (0.0, 0.5, 0.8):
        times = [mixing.efficiency(ar1(rng, rho, draws=1000), tokens=1.0).iat for _ in range(20)]
        assert np.median(times) == pytest.approx((1 + rho) / (1 - rho), rel=0.15)


@pytest.mark.parametrize("seed", SEEDS)
def test_paired_comparison_finds_a_faster_kernel_and_not_a_copy_of_the_baseline(seed):
    """16 targets: a kernel with rho 0.3 against one with rho 0.8 at equal tokens is about
    (0.7/1.3) / (0.2/1.8) = 4.8 times as efficient, and is found so; the same kernel against
    itself is not found different."""
    rng = np.random.default_rng(seed)
    values = {"slow": ess_per_1k(rng, 0.8, 16), "fast": ess_per_1k(rng, 0.3, 16), "copy": ess_per_1k(rng, 0.8, 16)}
    faster = mixing.paired_comparison(values, "fast", "slow", "ess")
    assert faster.targets == 16 and faster.wins >= 15
    assert 3.5 < faster.geometric_mean_ratio < 6.5 and faster.interval[0] > 3 and faster.wilcoxon_p < 1e-3
    same = mixing.paired_comparison(values, "copy", "slow", "ess")
    assert 0.8 < same.geometric_mean_ratio < 1.25 and same.interval[0] < 1 < same.interval[1] and same.wilcoxon_p > 0.01


@pytest.mark.parametrize("seed", SEEDS)
def test_steps_to_rhat_for_chains_that_forget_their_starts_and_for_chains_that_never_meet(seed):
    rng = np.random.default_rng(seed)
    spread = np.array([-6.0, -2.0, 2.0, 6.0])
    forgetting = ar1(rng, 0.5, draws=400, start=spread)  # starts forgotten within ~20 steps
    assert 30 <= mixing.steps_to_rhat(forgetting) <= 350
    stuck = ar1(rng, 0.5, draws=400) + spread[:, None]  # four modes, never left
    assert mixing.steps_to_rhat(stuck) is None
    assert mixing.steps_to_rhat(np.zeros((4, 40))) is None  # a constant functional: R-hat not estimable


def chain_records(rng, kernel: str, problem: str, rho: float, constant_answer: bool, steps: int = 40):
    """Records as `benchmarks.mixing` writes them, for 4 chains of AR(1) alpha*log p."""
    draws = ar1(rng, rho, draws=steps) - 30.0
    records = []
    for chain, values in enumerate(draws):
        answers = ["7"] * steps if constant_answer else [str(int(v > -30)) for v in values]
        records.append(dict(
            task="gsm8k", kernel=kernel, problem_id=problem, chain=chain, log_target=values.tolist(),
            length=(50 + 10 * np.sign(values + 30)).tolist(), answer=answers,
            correct=[answer == "1" for answer in answers], accepted=[True, False] * (steps // 2),
            cut=[5] * steps, length_before=[50] * steps, entropy_at_cut=[None] + [1.0] * (steps - 1),
            new_suffix_length=[20] * steps, wall_time_s=1.0))
    return records


def test_the_study_reports_prompts_whose_figures_are_not_estimable_instead_of_dropping_them():
    rng = np.random.default_rng(1)
    records = [record for problem in ("a", "b", "c", "d") for kernel, rho in (("random", 0.7), ("entropy", 0.2))
               for record in chain_records(rng, kernel, problem, rho, constant_answer=problem == "d")]
    rows = study.target_table(records, kept_draws=24)
    assert len(rows) == 8
    row = next(r for r in rows if r["problem_id"] == "a" and r["kernel"] == "random")
    assert row["acceptance"] == 0.5 and row["relative_cut"] == pytest.approx(0.1) and row["entropy_at_cut"] == 1.0
    assert row["tokens"] == 4 * 40 * 20 and row["kept_tokens"] == 4 * 24 * 20
    assert row["ess_per_1k_log_target"] == pytest.approx(1000 * row["ess_log_target"] / row["kept_tokens"])
    constant = next(r for r in rows if r["problem_id"] == "d" and r["kernel"] == "entropy")
    assert np.isnan(constant["ess_correct"]) and constant["why_correct"] == "constant functional"

    by_figure = {(c["scope"], c["figure"]): c for c in study.comparisons(rows, ["random", "entropy"])}
    log_target = by_figure["all", "ess_per_1k_log_target"]
    assert log_target["targets"] == 4 and log_target["geometric_mean_ratio"] > 2 and log_target["wins"] == 4
    correct = by_figure["all", "ess_per_1k_correct"]
    assert correct["targets"] == 3 and list(correct["not_estimable"]) == ["gsm8k/d"]
    assert "random nan" in correct["not_estimable"]["gsm8k/d"]


def test_the_study_counts_for_each_kernel_the_prompts_its_chains_left_unestimable():
    """A kernel whose chains on one prompt are much longer-memoried than the chain (rho 0.999 over
    40 draws) has that prompt counted against it, not silently dropped with the pair."""
    rng = np.random.default_rng(2)
    records = [record for problem, slow in (("a", 0.3), ("b", 0.3), ("c", 0.999))
               for kernel, rho in (("random", slow), ("entropy", 0.3))
               for record in chain_records(rng, kernel, problem, rho, constant_answer=False)]
    rows = study.target_table(records, kept_draws=24)
    counts = {c["kernel"]: c for c in study.coverage(rows, ["random", "entropy"])}
    assert counts["random"]["prompts"] == counts["entropy"]["prompts"] == 3
    assert counts["random"]["ess_estimable"] == 2 and counts["entropy"]["ess_estimable"] == 3
    assert counts["random"]["rhat_reached"] <= 2


@pytest.mark.parametrize("seed", SEEDS)
def test_an_ess_set_by_the_chain_length_rather_than_the_data_is_not_reported(seed):
    """4 chains of 20 draws: ArviZ gives about 7.5 for rho 0.99 and 0.999 alike (the chains are
    shorter than their autocorrelation time); that is not an estimate. White noise is one."""
    rng = np.random.default_rng(seed)
    for rho in (0.99, 0.999):
        estimate = mixing.efficiency(ar1(rng, rho, draws=20), tokens=1000.0).ess
        assert not estimate.estimable and "shorter than their autocorrelation time" in estimate.reason
    assert mixing.efficiency(ar1(rng, 0.0, draws=50), tokens=1000.0).ess.estimable


@pytest.mark.parametrize("name", ["short", "long-pilot", "long"])
def test_the_committed_mixing_summary_rederives_from_the_committed_chains(name):
    """The short study, and issue 59's pilot and its segmented study (joined at the segments every
    chain has, so a study committed mid-pass re-derives too)."""
    results = Path(study.__file__).resolve().parents[1] / study.STUDIES[name][1]
    if not (results / "summary.json").is_file():
        pytest.skip(f"no committed {name} mixing study")
    summary = json.loads((results / "summary.json").read_text())
    segmented = summary["settings"].get("segments", 1) > 1
    records = study.RecordStore(results / study.CHAINS, study.CHAIN_KEY + (("segment",) if segmented else ())).read()
    records = study.whole_chains(records)
    assert summary["chains"] == len(records)
    assert study._finite(study.target_table(records, summary["settings"]["kept_draws"])) == summary["targets"]


def test_entropy_jumps_are_the_rises_past_the_floor_and_traces_count_them_per_threshold():
    jumps = study.entropy_jumps(np.array([0.1, 0.2, 1.0, 0.3, 2.5]))  # rises 0.1, 0.1, 0.8, -0.7, 2.2
    assert jumps == [[0.4, 0.8], [0.8, 2.2]]
    records = [dict(task="gsm8k", kernel="random", entropy_jumps=jumps), dict(task="gsm8k", kernel="random", entropy_jumps=[])]
    [row] = study.trace_table(records)
    assert (row["completions"], row["jumps_over_0.5"], row["jumps_over_1"], row["jumps_over_2"]) == (2, 1.0, 0.5, 0.5)
    assert row["largest_jump_position"] == 0.8


def test_answer_changes_count_the_kept_steps_whose_answer_differs_from_the_step_before():
    """The step before the first kept draw counts as its predecessor; no answer is an answer."""
    chains = [dict(answer=["1", "1", "2", "2", None]), dict(answer=["3", "3", "3", "3", "3"])]
    assert study.answer_changes(chains, kept_draws=2) == 1  # 2 -> None; 1 -> 2 lies before the window
    assert study.answer_changes(chains, kept_draws=4) == 2  # 1 -> 2 and 2 -> None
    assert study.answer_changes(chains, kept_draws=10) == 2  # a window past the start counts what exists


def test_acceptance_is_tabled_by_the_tokens_each_proposal_replaced():
    chain = dict(task="gsm8k", kernel="random", length_before=[20, 20, 40, 100], cut=[10, 18, 0, 10],
                 accepted=[1, 0, 1, 0])  # replaced 10, 2, 40, 90
    assert study.acceptance_table([chain]) == [
        dict(task="gsm8k", kernel="random", replaced="0-15", steps=2, acceptance=0.5),
        dict(task="gsm8k", kernel="random", replaced="32-63", steps=1, acceptance=1.0),
        dict(task="gsm8k", kernel="random", replaced="64-127", steps=1, acceptance=0.0)]


def test_a_study_in_segments_can_be_extended_and_keeps_its_extension(tmp_path):
    base = dict(model="m", mh_steps=50, segments=2)
    assert study.study_settings(base, tmp_path) == base  # written
    longer = study.study_settings(base, tmp_path, segments=5)
    assert longer == dict(model="m", mh_steps=125, segments=5)
    assert study.study_settings(base, tmp_path) == longer  # a plain resume keeps the extension
    assert json.loads((tmp_path / "settings.json").read_text()) == longer
    with pytest.raises(SystemExit, match="already has 5 segments"):
        study.study_settings(base, tmp_path, segments=3)
    with pytest.raises(SystemExit, match="model: m -> other"):
        study.study_settings(base | dict(model="other"), tmp_path)
    with pytest.raises(SystemExit, match="not recorded in segments"):
        study.study_settings(dict(model="m", mh_steps=50), tmp_path / "flat", segments=3)
    assert study.study_settings(dict(model="m", mh_steps=50), tmp_path / "flat") == dict(model="m", mh_steps=50)


def test_chains_recorded_in_segments_are_joined_in_order_up_to_the_segments_every_chain_has():
    def part(chain, segment, draws):
        lists = {key: [f"{chain}.{segment}.{i}" for i in range(draws)] for key in study.PER_STEP}
        return dict(task="gsm8k", kernel="random", problem_id="p", chain=chain, segment=segment, start_length=9 + segment,
                    wall_time_s=1.0, last_tokens=[1], entropy_jumps=[[0.5, float(segment)]], **lists)

    records = [part(0, 1, 2), part(0, 0, 2), part(1, 0, 2), part(0, 2, 2)]  # chain 1 has one segment so far
    joined = {record["chain"]: record for record in study.whole_chains(records)}
    assert [joined[0]["segments"], joined[1]["segments"]] == [1, 1]
    records.append(part(1, 1, 2))
    joined = {record["chain"]: record for record in study.whole_chains(records)}
    assert joined[0]["log_target"] == ["0.0.0", "0.0.1", "0.1.0", "0.1.1"] and joined[0]["segments"] == 2
    assert joined[0]["start_length"] == 9 and joined[0]["wall_time_s"] == 2.0 and "last_tokens" not in joined[0]
    assert joined[0]["entropy_jumps"] == [[0.5, 1.0]]  # the last joined segment's last draw
    unsegmented = [dict(part(0, 0, 2), segment=None)]
    for record in unsegmented:
        del record["segment"]
    assert study.whole_chains(unsegmented) == unsegmented
