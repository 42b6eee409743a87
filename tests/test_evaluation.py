"""Evaluation runs: resumable record stores, and the statistics of their summaries."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from pandas.testing import assert_frame_equal
from scipy import stats

from ppl_ecmh.errors import PplEcmhError
from ppl_ecmh.evaluation import EvalSettings, RecordStore, experiment, figures, report, run_eval, summary
from ppl_ecmh.evaluation.store import RECORDS, SETTINGS, check_settings, locked, open_results, read_settings
from ppl_ecmh.lm import toy
from ppl_ecmh.tasks import TASKS
from ppl_ecmh.tasks.base import Problem, Task

PROBLEM = toy.markov_problem(vocab_size=4, max_new_tokens=4, seed=3)
LETTERS = "abc"  # token 3 is EOS


class LetterTask(Task):
    """Ten problems; a completion is right when it starts with the problem's letter."""

    name = "letters"
    default_source = "built-in letters"

    def load(self, source=None, limit=None):
        problems = [Problem(f"p{i}", LETTERS[i % 3], LETTERS[i % 3], {"parity": i % 2}) for i in range(10)]
        return problems[:limit]

    def prompt(self, problem, chat=True):
        return problem.question

    def extract(self, completion):
        return completion[:1] or None

    def is_correct(self, extracted, problem):
        return extracted == problem.answer


@dataclasses.dataclass
class LetterModel:
    """The interface `run_eval` uses of a loaded model, over a toy Markov LM."""

    lm: object = PROBLEM.lm

    def encode(self, text, chat=True):
        return [LETTERS.index(text)]

    def decode(self, tokens):
        return "".join(LETTERS[t] for t in tokens if t < 3)

    def fit_context(self, prompt_length, max_new_tokens, stretch=False):
        pass


@pytest.fixture
def letters(monkeypatch):
    monkeypatch.setitem(TASKS, "letters", LetterTask())
    return EvalSettings(task="letters", max_new_tokens=4, mh_steps=2, batch_size=3)


SAMPLERS, SEEDS = ["ancestral", "entropy-cut"], [0, 1]


class Killed(Exception):
    """Stands in for the process being killed between two batches."""


def keys_of(records):
    return [(r["sampler"], r["seed"], r["problem_id"]) for r in records]


# what a record says about its draw; the rest (wall time, machine, engine figures) is about the run
DRAW_FIELDS = ("completion", "answer", "correct", "tokens_generated", "completion_length", "alpha_log_p",
               "acceptance", "mh_suffix_tokens", "num_draws")


def draws_by_key(records):
    return {(r["sampler"], r["seed"], r["problem_id"]): tuple(r[f] for f in DRAW_FIELDS) for r in records}


def test_an_interrupted_run_resumes_to_the_records_an_uninterrupted_run_writes(letters, monkeypatch, tmp_path):
    real_append, appended = RecordStore.append, []

    def killed_after_seven_records(store, records):
        if len(appended) == 7:
            raise Killed
        appended.append(records)
        real_append(store, records)

    monkeypatch.setattr(RecordStore, "append", killed_after_seven_records)
    with pytest.raises(Killed):
        run_eval(letters, SAMPLERS, SEEDS, tmp_path, progress=False, model=LetterModel())
    monkeypatch.setattr(RecordStore, "append", real_append)
    before = RecordStore(tmp_path / RECORDS).read()
    assert len(before) == 7
    with open(tmp_path / RECORDS, "a") as handle:  # a record cut short by a kill
        handle.write('{"sampler": "ancestral", "seed": 1, "problem_')

    store = run_eval(letters, SAMPLERS, SEEDS, tmp_path, progress=False, model=LetterModel())
    records = store.read()
    assert sorted(keys_of(records)) == sorted((s, seed, f"p{i}") for s in SAMPLERS for seed in SEEDS for i in range(10))
    assert records[: len(before)] == before  # nothing rewritten
    lines = (tmp_path / RECORDS).read_text().splitlines()
    assert sum(1 for line in lines if line.endswith("}")) == 40

    # every record equals the one an uninterrupted run writes, even one with another slot count
    other_width = dataclasses.replace(letters, batch_size=5)
    fresh = run_eval(other_width, SAMPLERS, SEEDS, tmp_path / "fresh", progress=False, model=LetterModel()).read()
    assert draws_by_key(records) == draws_by_key(fresh)


@pytest.mark.parametrize("sampler", ["power-smc", "tmc"])
def test_population_samplers_resume_to_the_records_any_batch_size_writes(letters, monkeypatch, tmp_path, sampler):
    """Their randomness is keyed by (seed, sampler, problem): a record is the same after a resume
    into other batches, and with another batch size."""
    real_batch, calls = experiment._run_batch, []

    def killed_on_the_third_batch(*args):
        calls.append(args)
        if len(calls) == 3:
            raise Killed
        return real_batch(*args)

    monkeypatch.setattr(experiment, "_run_batch", killed_on_the_third_batch)
    # three problems a batch: two particles each, or two candidates with one rollout each
    settings = dataclasses.replace(letters, num_particles=2, num_candidates=2, num_rollouts=1, batch_size=6)
    with pytest.raises(Killed):
        run_eval(settings, [sampler], [0], tmp_path, progress=False, model=LetterModel())
    assert len(RecordStore(tmp_path / RECORDS).read()) == 6  # two batches of three
    monkeypatch.setattr(experiment, "_run_batch", real_batch)
    records = run_eval(settings, [sampler], [0], tmp_path, progress=False, model=LetterModel()).read()
    assert sorted(keys_of(records)) == sorted((sampler, 0, f"p{i}") for i in range(10))

    other_batches = dataclasses.replace(settings, batch_size=8)  # four problems a batch: other neighbours
    fresh = run_eval(other_batches, [sampler], [0], tmp_path / "fresh", progress=False, model=LetterModel()).read()
    assert draws_by_key(records) == draws_by_key(fresh)
    reseeded = run_eval(settings, [sampler], [1], tmp_path / "reseeded", progress=False, model=LetterModel()).read()
    assert [draws[1:] for draws in draws_by_key(reseeded).values()] != \
        [draws[1:] for draws in draws_by_key(records).values()]  # the seed still matters


def test_a_lockstep_batch_holds_as_many_problems_as_fit_its_rows():
    settings = EvalSettings(task="humaneval", batch_size=64, num_particles=8, num_candidates=4, num_rollouts=2)
    assert [settings.problems_per_batch(name) for name in ("power-smc", "tmc", "best-of-n")] == [8, 8, 64]
    assert dataclasses.replace(settings, batch_size=4).problems_per_batch("power-smc") == 1


def test_a_completed_run_is_not_redone(letters, tmp_path):
    run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())
    content = (tmp_path / RECORDS).read_bytes()
    run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=None)  # would fail to load a model
    assert (tmp_path / RECORDS).read_bytes() == content


def test_committed_outcomes_let_a_fresh_clone_resume_without_rerunning_or_changing_the_summary(letters, tmp_path,
                                                                                               monkeypatch):
    from benchmarks.study import export_outcomes, restore_outcomes

    ran = run_eval(letters, SAMPLERS, [0], tmp_path / "runs", progress=False, model=LetterModel()).read()
    committed = export_outcomes(ran, tmp_path / "results" / "outcomes.jsonl")
    assert len(committed.read()) == len(ran) and not any("completion" in r for r in committed.read())
    fresh = open_results(tmp_path / "fresh", letters)
    assert restore_outcomes(committed, fresh) == len(ran)
    assert restore_outcomes(committed, fresh) == 0
    monkeypatch.setattr("ppl_ecmh.lm.load_model", lambda *args, **kwargs: pytest.fail("reran restored work"))
    run_eval(letters, SAMPLERS, [0], tmp_path / "fresh", progress=False)
    restored = summary.records_frame(fresh.read())
    assert_frame_equal(summary.accuracy_table(restored), summary.accuracy_table(summary.records_frame(ran)))
    assert_frame_equal(summary.paired_comparisons(restored), summary.paired_comparisons(summary.records_frame(ran)))


def test_records_carry_grades_costs_and_acceptance(letters, tmp_path):
    records = run_eval(letters, ["entropy-cut"], [0], tmp_path, progress=False, model=LetterModel()).read()
    for record in records:
        assert record["correct"] == record["completion"].startswith(LETTERS[int(record["problem_id"][1:]) % 3])
        assert record["tokens_generated"] >= record["completion_length"] and record["num_draws"] == 2
        assert 0.0 <= record["acceptance"] <= 1.0 and record["wall_time_s"] > 0
        assert 0 < record["mh_suffix_tokens"] <= record["tokens_generated"]
        assert record["machine"] == experiment.machine_label()
    independent = run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel()).read()
    assert all(r["mh_suffix_tokens"] is None for r in independent if r["sampler"] == "ancestral")


def test_where_and_limit_select_problems_by_metadata(letters, tmp_path):
    settings = dataclasses.replace(letters, where={"parity": "1"}, limit=3)
    records = run_eval(settings, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel()).read()
    assert [r["problem_id"] for r in records] == ["p1", "p3", "p5"]
    shuffled = dataclasses.replace(letters, shuffle_seed=7, limit=4)
    first = [p.id for p in experiment.select_problems(LetterTask(), shuffled)]
    assert first == [p.id for p in experiment.select_problems(LetterTask(), shuffled)] and first != ["p0", "p1", "p2", "p3"]
    with pytest.raises(PplEcmhError, match="matching"):
        run_eval(dataclasses.replace(letters, where={"parity": "7"}), ["ancestral"], [0], tmp_path / "none")


def test_problems_select_by_id_and_a_missing_id_is_named(letters, tmp_path):
    settings = dataclasses.replace(letters, problems=["p4", "p1"], where={"parity": "0"})
    with pytest.raises(PplEcmhError, match="no problem p1 .* matching"):  # p1 is odd
        experiment.select_problems(LetterTask(), settings)
    records = run_eval(dataclasses.replace(settings, where=None), ["ancestral"], [0], tmp_path, progress=False,
                       model=LetterModel()).read()
    assert [r["problem_id"] for r in records] == ["p1", "p4"]  # in the task's order


def test_a_directory_with_other_settings_is_refused(letters, tmp_path):
    run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())
    with pytest.raises(PplEcmhError, match="alpha: 4.0 there, 2.0 now"):
        run_eval(dataclasses.replace(letters, alpha=2.0), ["ancestral"], [0], tmp_path, model=LetterModel())


def test_settings_written_under_the_former_option_names_resume_and_read_under_todays(letters, tmp_path):
    """A results directory from before the sampler options had one spelling (the committed study's
    settings.json, for one) is the same evaluation under today's names, and only that one."""
    settings = dataclasses.replace(letters, num_mcmc_steps=4, num_candidates=2, num_rollouts=3, horizon=5)
    former = {key: value for key, value in dataclasses.asdict(settings).items() if key != "cut_params"}
    for old, new in {"mcmc_steps": "num_mcmc_steps", "tmc_candidates": "num_candidates",
                     "tmc_rollouts": "num_rollouts", "tmc_horizon": "horizon"}.items():
        former[old] = former.pop(new)
    (tmp_path / SETTINGS).write_text(json.dumps(former))
    check_settings(tmp_path, settings)
    assert read_settings(tmp_path) == settings
    with pytest.raises(PplEcmhError, match="num_mcmc_steps: 4 there, 5 now"):
        check_settings(tmp_path, dataclasses.replace(settings, num_mcmc_steps=5))
    with pytest.raises(PplEcmhError, match=r"cut_params: \[\] there, \[\['eps', 0.2\]\] now"):
        check_settings(tmp_path, dataclasses.replace(settings, cut_params=(("eps", 0.2),)))


def test_a_corrupt_line_inside_the_store_is_an_error_that_repair_resolves_losing_nothing_intact(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"sampler": "a", "seed": 0, "problem_id": "p"}\nnot json\n[1, 2]\n'
                    '{"sampler": "a", "seed": 1, "problem_id": "p"}\n')
    store = RecordStore(path)
    with pytest.raises(PplEcmhError, match="records.jsonl:2: not a record; `ppl-ecmh eval` with --repair"):
        store.read()
    assert store.repair() == 2
    assert [r["seed"] for r in store.read()] == [0, 1]
    assert store.quarantine_path.read_text() == "not json\n[1, 2]\n"
    assert store.repair() == 0


def test_a_store_keyed_by_other_fields_keeps_the_first_record_of_each_key_and_refuses_lines_without_them(tmp_path):
    store = RecordStore(tmp_path / "chains.jsonl", key_fields=("kernel", "chain"))
    store.append([dict(kernel="random", chain=0, x=1), dict(kernel="random", chain=1, x=2),
                  dict(kernel="random", chain=0, x=3)])
    assert [r["x"] for r in store.read()] == [1, 2] and store.done() == {("random", 0), ("random", 1)}
    store.append([dict(sampler="a", seed=0, problem_id="p")])  # an evaluation record: not one of these
    with pytest.raises(PplEcmhError, match="chains.jsonl:4: not a record"):
        store.read()


def test_eval_repair_quarantines_damaged_lines_and_resumes(letters, tmp_path):
    run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())
    lines = (tmp_path / RECORDS).read_text().splitlines()
    (tmp_path / RECORDS).write_text("\n".join(lines[:3] + ['{"sampler": "anc'] + lines[4:]) + "\n")
    with pytest.raises(PplEcmhError, match="--repair"):
        run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())
    store = run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel(), repair=True)
    assert sorted(keys_of(store.read())) == sorted(("ancestral", 0, f"p{i}") for i in range(10))


def test_eval_refuses_a_record_without_its_grade_and_repair_quarantines_and_reruns_it(letters, tmp_path):
    run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())
    path = tmp_path / RECORDS
    lines = path.read_text().splitlines()
    damaged = json.loads(lines[2])
    del damaged["correct"]
    lines[2] = json.dumps(damaged)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PplEcmhError, match=rf"records.jsonl:3: the record \(ancestral, 0, {damaged['problem_id']}\) "
                                           r"lacks `correct`; `ppl-ecmh eval` with --repair"):
        run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())
    store = run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel(), repair=True)
    assert sorted(keys_of(store.read())) == sorted(("ancestral", 0, f"p{i}") for i in range(10))  # run again
    assert json.loads(store.quarantine_path.read_text()) == damaged


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_interval_reported_contains_its_estimate(seed):
    """Accuracy (Wilson, over problems, seeds averaged) and paired differences (bootstrap), on
    random outcomes of three samplers, some problems with one seed and some with three."""
    rng = np.random.default_rng(seed)
    records = [dict(sampler=sampler, seed=s, problem_id=f"p{p}", correct=bool(rng.random() < rate),
                    tokens_generated=10, wall_time_s=1.0, acceptance=0.5)
               for sampler, rate in (("ecmh", 0.6), ("ancestral", 0.3), ("low-temp", 0.97))
               for p in range(int(rng.integers(3, 30))) for s in range(1 if p % 2 else 3)]
    frame = summary.records_frame(records)
    accuracy = summary.accuracy_table(frame)
    assert ((accuracy["ci_low"] <= accuracy["accuracy"]) & (accuracy["accuracy"] <= accuracy["ci_high"])).all()
    pairs = summary.paired_comparisons(frame, num_resamples=2000)
    assert ((pairs["ci_low"] <= pairs["accuracy_difference"] + 1e-12)
            & (pairs["accuracy_difference"] <= pairs["ci_high"] + 1e-12)).all()


def test_a_grader_that_raises_fails_that_record_and_the_run_goes_on(letters, tmp_path, monkeypatch):
    real_grade = LetterTask.grade

    def breaks_on_p3(task, completion, problem):
        if problem.id == "p3":
            raise PermissionError("cleanup failed")
        return real_grade(task, completion, problem)

    monkeypatch.setattr(LetterTask, "grade", breaks_on_p3)
    records = {r["problem_id"]: r for r in run_eval(letters, ["ancestral"], [0], tmp_path, progress=False,
                                                    model=LetterModel()).read()}
    assert len(records) == 10
    assert records["p3"]["correct"] is False and records["p3"]["grading_error"] == "PermissionError: cleanup failed"
    assert all(r["grading_error"] is None for key, r in records.items() if key != "p3")


def test_the_grading_table_counts_how_each_test_run_ended_and_each_grader_that_raised():
    outcomes = ["passed", "exited_early", "exited_early", "timeout", None, "failed", "sandbox_error"]
    records = [dict(sampler="a" if i < 4 else "b", problem_id=f"p{i}", correct=outcome == "passed",
                    execution=outcome, grading_error="OSError: x" if outcome is None else None)
               for i, outcome in enumerate(outcomes)]
    table = summary.grading_table(summary.records_frame(records)).set_index("sampler")
    assert table.loc["a"].to_dict() == dict(records=4, passed=1, failed=0, timeout=1, exited_early=2,
                                            sandbox_error=0, grader_raised=0)
    assert table.loc["b"].to_dict() == dict(records=3, passed=0, failed=1, timeout=0, exited_early=0,
                                            sandbox_error=1, grader_raised=1)
    no_code = [dict(sampler="a", problem_id="p", correct=True, execution=None, grading_error=None)]
    assert summary.grading_table(summary.records_frame(no_code)).empty
    assert summary.grading_table(summary.records_frame([dict(sampler="a", problem_id="p", correct=True)])).empty


@pytest.mark.parametrize("task", ["gsm8k", "humaneval"])
def test_the_committed_study_summary_rederives_from_the_committed_outcomes(task):
    from benchmarks import study

    results = Path(study.__file__).resolve().parents[1] / study.RESULTS / task
    committed = json.loads((results / "summary.json").read_text())
    settings = EvalSettings(**committed["settings"])
    derived = study.study_summary(task, RecordStore(results / study.OUTCOMES).read(), settings)
    for key in ("problem_ids", "samplers_not_run_yet", "accuracy", "completions", "grading", "paired"):
        assert_close(json.loads(json.dumps(derived[key])), committed[key], key)


def assert_close(derived, committed, where: str) -> None:
    """Equal JSON values, floats to 1e-9 relative (nan equal to nan)."""
    if isinstance(committed, dict):
        assert derived.keys() == committed.keys(), where
        for key in committed:
            assert_close(derived[key], committed[key], f"{where}.{key}")
    elif isinstance(committed, list):
        assert len(derived) == len(committed), where
        for index, (one, other) in enumerate(zip(derived, committed)):
            assert_close(one, other, f"{where}[{index}]")
    elif isinstance(committed, float):
        assert derived == pytest.approx(committed, rel=1e-9, nan_ok=True), where
    else:
        assert derived == committed, where


def test_a_second_eval_on_the_same_directory_is_refused_while_the_first_runs(letters, tmp_path):
    with locked(tmp_path):
        with pytest.raises(PplEcmhError, match="in use by another evaluation"):
            run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())
    assert not (tmp_path / RECORDS).exists()
    run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())  # the lock was released


def test_settings_are_written_only_once_the_model_has_loaded(letters, tmp_path, monkeypatch):
    def no_such_model(*args, **kwargs):
        raise PplEcmhError("unknown model")

    monkeypatch.setattr("ppl_ecmh.lm.load_model", no_such_model)
    with pytest.raises(PplEcmhError, match="unknown model"):
        run_eval(letters, ["ancestral"], [0], tmp_path, progress=False)
    assert not (tmp_path / SETTINGS).exists()  # a corrected command is not refused
    run_eval(dataclasses.replace(letters, alpha=2.0), ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())
    (tmp_path / SETTINGS).write_text('{"task": "letters", "alp')
    with pytest.raises(PplEcmhError, match="settings.json"):
        run_eval(letters, ["ancestral"], [0], tmp_path, progress=False, model=LetterModel())


def test_an_out_path_that_is_a_file_is_refused(letters, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PplEcmhError, match="not a directory"):
        run_eval(letters, ["ancestral"], [0], tmp_path / "file", progress=False, model=LetterModel())


def frame_of(outcomes: dict) -> "summary.pd.DataFrame":
    """Records from {sampler: [[problem 0 seeds...], [problem 1 seeds...], ...]} of 0/1 outcomes."""
    records = [dict(sampler=sampler, seed=seed, problem_id=f"p{problem}", correct=bool(value), tokens_generated=10,
                    wall_time_s=1.0, acceptance=1.0)
               for sampler, table in outcomes.items() for problem, row in enumerate(table) for seed, value in enumerate(row)]
    return summary.records_frame(records)


def test_accuracy_interval_is_wilsons_and_tokens_are_relative_to_ancestral():
    frame = frame_of({"ancestral": [[1]] * 8 + [[0]] * 2, "entropy-cut": [[1]] * 10})
    table = summary.accuracy_table(frame).set_index("sampler")
    expected = stats.binomtest(8, 10).proportion_ci(0.95, method="wilson")
    assert table.loc["ancestral", "ci_low"] == pytest.approx(expected.low)
    assert table.loc["ancestral", "ci_high"] == pytest.approx(expected.high)
    assert table.loc["entropy-cut", "ci_high"] == 1.0 and table.loc["entropy-cut", "tokens_vs_ancestral"] == 1.0


def test_mh_suffix_tokens_are_averaged_for_mh_samplers_and_left_out_when_no_record_has_them():
    frame = frame_of({"ancestral": [[1]] * 4, "entropy-cut": [[1]] * 4})
    assert "mh_suffix_tokens_per_problem" not in summary.accuracy_table(frame)  # records from before the field
    frame["mh_suffix_tokens"] = np.where(frame["sampler"] == "entropy-cut", [3, 5, 7, 9] * 2, None)
    table = summary.accuracy_table(frame).set_index("sampler")
    assert table.loc["entropy-cut", "mh_suffix_tokens_per_problem"] == pytest.approx(6.0)
    assert np.isnan(table.loc["ancestral", "mh_suffix_tokens_per_problem"])
    header, rows = report._table(table.reset_index())
    assert rows[0][header.index("mh_suffix_tokens_per_problem")] == ""  # an empty cell, not "nan"


def test_wall_time_machines_flags_a_sampler_whose_wall_time_mixes_machines():
    frame = frame_of({"ancestral": [[1]] * 4, "entropy-cut": [[1]] * 4})
    assert "wall_time_machines" not in summary.accuracy_table(frame)  # records from before the field
    frame["machine"] = ["a"] * 4 + ["a", "b", None, None]  # resumed elsewhere, and partly run before the field
    table = summary.accuracy_table(frame).set_index("sampler")
    assert table.loc["ancestral", "wall_time_machines"] == 1
    assert table.loc["entropy-cut", "wall_time_machines"] == 3  # a, b and one unknown


def test_completion_table_separates_cut_off_completions_and_scores_log_p_per_token():
    records = [dict(sampler="s", seed=0, problem_id=f"p{i}", correct=correct, completion_length=length,
                    alpha_log_p=4.0 * log_p)
               for i, (correct, length, log_p) in enumerate([(True, 10, -5.0), (False, 10, -10.0), (False, 16, -8.0)])]
    row = summary.completion_table(summary.records_frame(records), alpha=4.0, max_new_tokens=16).iloc[0]
    assert row["completion_length"] == pytest.approx(12.0) and row["at_token_limit"] == pytest.approx(1 / 3)
    assert row["accuracy_when_finished"] == pytest.approx(0.5)  # the cut-off completion is left out
    assert row["log_p_per_token"] == pytest.approx((-0.5 - 1.0 - 0.5) / 3)


def test_difference_interval_is_newcombes_hybrid_score_interval():
    # Newcombe (1998), Statistics in Medicine 17, 873-890, table II, example (a): 56/70 against 48/80
    low, high = summary.difference_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    low, high = summary.difference_interval(9, 10, 3, 10)  # example (c) of the same table
    assert (round(low, 4), round(high, 4)) == (0.1705, 0.8090)


def test_pass_at_k_is_the_unbiased_estimator():
    # one problem, 4 seeds, 1 correct: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2, pass@4 = 1
    passes = summary.pass_at_k(frame_of({"s": [[1, 0, 0, 0]]})).set_index("k")["pass_at_k"]
    assert passes[1] == pytest.approx(0.25) and passes[2] == pytest.approx(0.5) and passes[4] == pytest.approx(1.0)


def test_paired_comparison_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.5
    better = truth | (rng.random(200) < 0.3)  # right wherever the other is, and on more problems
    pairs = summary.paired_comparisons(frame_of({"better": better[:, None], "worse": truth[:, None]})).iloc[0]
    assert pairs["only_versus_right"] == 0 and pairs["mcnemar_p"] < 1e-6 and pairs["ci_low"] > 0
    shuffled = rng.permutation(truth)
    null = summary.paired_comparisons(frame_of({"a": truth[:, None], "b": shuffled[:, None]})).iloc[0]
    assert null["mcnemar_p"] > 0.05 and null["ci_low"] < 0 < null["ci_high"]
    # McNemar's exact p for 6 discordant pairs all one way: 2 * 0.5**6
    six = summary.paired_comparisons(frame_of({"x": [[1]] * 6 + [[0]] * 4, "y": [[0]] * 10})).iloc[0]
    assert six["mcnemar_p"] == pytest.approx(2 * 0.5**6)


def test_paired_table_leads_with_ecmh_reads_other_pairs_winner_first_and_adjusts_p_values_by_holm():
    frame = frame_of({"ancestral": [[0]] * 10, "ecmh": [[1]] * 6 + [[0]] * 4, "low-temp": [[1]] * 3 + [[0]] * 7,
                      "karan-du": [[1]] * 8 + [[0]] * 2})
    pairs = summary.paired_comparisons(frame)
    assert list(zip(pairs["sampler"], pairs["versus"]))[:4] == [("ecmh", "ancestral"), ("ecmh", "low-temp"),
                                                                ("ecmh", "karan-du"), ("low-temp", "ancestral")]
    assert pairs["accuracy_difference"].tolist()[:4] == pytest.approx([0.6, 0.3, -0.2, 0.3])
    assert (pairs["accuracy_difference"].iloc[3:] >= 0).all()
    # Holm: sorted p (0.01, 0.03, 0.04) become (3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)); Bonferroni would
    # give 0.09 and 0.12, an unadjusted table 0.03 and 0.04
    assert summary.holm_adjusted(np.array([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])
    assert (pairs["mcnemar_p_holm"] >= pairs["mcnemar_p"]).all()
    left, right = figures.paired_differences(pairs).axes
    assert [label.get_text() for label in left.get_yticklabels()] == [
        f"{a} - {b}" for a, b in zip(pairs["sampler"], pairs["versus"])]
    assert [label.get_text() for label in right.get_yticklabels()] == [
        f"10 pairs, Holm p {p:.2g}" for p in pairs["mcnemar_p_holm"]]


def test_interval_figures_keep_their_axis_label_inside_the_figure():
    frame = frame_of({"ancestral": [[0]] * 10, "ecmh": [[1]] * 6 + [[0]] * 4})
    for figure in (figures.accuracy_intervals(summary.accuracy_table(frame)),
                   figures.paired_differences(summary.paired_comparisons(frame))):
        figure.canvas.draw()
        label = figure.axes[0].xaxis.label
        assert label.get_text() and label.get_window_extent().y0 >= 0  # not cut off at the bottom


def test_best_of_n_matches_the_mean_cost_of_the_mh_sampler_listed_before_it(letters, tmp_path):
    store = run_eval(letters, ["entropy-cut", "best-of-n", "power-smc"], [0], tmp_path, progress=False,
                     model=LetterModel())
    records = store.read()
    mh_tokens = [r["tokens_generated"] for r in records if r["sampler"] == "entropy-cut"]
    budget = round(sum(mh_tokens) / len(mh_tokens))
    bon = [r for r in records if r["sampler"] == "best-of-n"]
    assert len(bon) == 10 and all(r["token_budget"] == budget and r["tokens_generated"] <= budget for r in bon)
    assert all(r["num_draws"] == 1 for r in records if r["sampler"] == "power-smc")
    with pytest.raises(PplEcmhError, match="to match its budget"):
        run_eval(letters, ["best-of-n"], [1], tmp_path, model=LetterModel())


def test_a_rerun_is_compared_per_sampler_and_per_pair_with_the_samplers_both_runs_have():
    from benchmarks.study import rerun_pairs, rerun_rows

    def summary_of(accuracy, wall_s, only, order=("b", "a")):
        rows = [dict(sampler=name, problems=80, accuracy=right / 80, tokens_per_problem=200.0, wall_s_per_problem=wall)
                for (name, right), wall in zip(accuracy.items(), wall_s)]
        return dict(accuracy=rows, paired=[dict(sampler=order[0], versus=order[1], only_sampler_right=only[0],
                                                only_versus_right=only[1], mcnemar_p_holm=0.5)])

    old = summary_of({"a": 40, "b": 60, "dropped": 10}, [100.0, 80.0, 1.0], (25, 5))
    new = summary_of({"a": 44, "b": 60}, [25.0, 40.0], (20, 4))
    rows = {row["sampler"]: row for row in rerun_rows(old, new)}
    assert rows.keys() == {"a", "b"}
    assert (rows["a"]["right_then"], rows["a"]["right_now"]) == ("40/80", "44/80")
    assert rows["a"]["difference"] == pytest.approx(0.05) and rows["a"]["speed_up"] == pytest.approx(4.0)
    assert (rows["a"]["ci_low"], rows["a"]["ci_high"]) == summary.difference_interval(44, 80, 40, 80)
    assert rows["b"]["ci_low"] < 0 < rows["b"]["ci_high"] and rows["b"]["speed_up"] == pytest.approx(2.0)
    assert rerun_pairs(old, new) == [dict(sampler="b", versus="a", then=(25, 5, 0.5), now=(20, 4, 0.5))]
    # a pair the rerun orders the other way (its more accurate sampler first) is still compared, its
    # first-run counts turned round
    flipped = summary_of({"a": 64, "b": 60}, [25.0, 40.0], (6, 2), order=("a", "b"))
    assert rerun_pairs(old, flipped) == [dict(sampler="a", versus="b", then=(5, 25, 0.5), now=(6, 2, 0.5))]
