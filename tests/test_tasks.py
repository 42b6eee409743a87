"""Task loaders and graders, on the datasets in ../shared/data and on known right and wrong answers."""

from pathlib import Path

import pytest

from ppl_ecmh.errors import PplEcmhError
from ppl_ecmh.tasks import AIME, GSM8K, MATH500, get_task
from ppl_ecmh.tasks.base import Problem
from ppl_ecmh.tasks.math import last_boxed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside the project")


@needs_shared
@pytest.mark.parametrize("task, file, count", [(MATH500(), "math500.jsonl", 500), (GSM8K(), "gsm8k_test.jsonl", 1319),
                                               (AIME(), "aime24.jsonl", 30)])
def test_shared_datasets_load_and_their_reference_answers_grade_correct(task, file, count):
    problems = task.load(str(SHARED / file))
    assert len(problems) == count and len({p.id for p in problems}) == count
    for problem in problems:  # every reference answer is accepted as its own answer
        assert task.grade(f"So the answer is \\boxed{{{problem.answer}}}.", problem)[1], problem
    assert task.prompt(problems[0]).endswith("within \\boxed{}.")
    assert len(task.load(str(SHARED / file), limit=7)) == 7


@pytest.mark.parametrize(
    "completion, reference, correct",
    [
        ("the answer is \\boxed{\\frac{1}{2}}", "0.5", True),
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("\\boxed{1/2}", "\\frac12", True),
        ("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),
        ("\\boxed{(3, -1)}", "(3,-1)", True),
        ("\\boxed{3}", "4", False),
        ("\\boxed{\\frac{1}{3}}", "0.5", False),
        ("I think it's 0.5", "0.5", False),  # no boxed answer: nothing extracted
        ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
        ("\\boxed{18.90}", "\\$18.90", True),
        ("\\boxed{32348}", "\\$32,\\!348", True),
        ("\\boxed{36}", "\\$18.90", False),
    ],
)
def test_math_grader_accepts_equivalent_forms_only(completion, reference, correct):
    assert MATH500().grade(completion, Problem("p", "q", reference))[1] is correct


@pytest.mark.parametrize(
    "completion, correct",
    [("... so she pays 18 dollars. #### 18", True), ("The total is \\boxed{18}", True), ("It costs $18.00.", True),
     ("The answer is 1,800", False), ("no number here", False), ("\\boxed{17} then 18", False)],
)
def test_gsm8k_grader_reads_boxed_or_last_number(completion, correct):
    assert GSM8K().grade(completion, Problem("p", "q", "18"))[1] is correct


@pytest.mark.parametrize("completion, correct", [("\\boxed{033}", True), ("\\boxed{33}", True),
                                                 ("\\boxed{33.5}", False), ("\\boxed{34}", False)])
def test_aime_grader_compares_integers(completion, correct):
    assert AIME().grade(completion, Problem("p", "q", "33"))[1] is correct


def test_last_boxed_handles_nested_braces():
    assert last_boxed("first \\boxed{1} then \\boxed{\\frac{a}{b^{2}}} end") == "\\frac{a}{b^{2}}"
    assert last_boxed("unclosed \\boxed{1") is None


def test_missing_files_and_unknown_tasks_are_clear(tmp_path):
    with pytest.raises(PplEcmhError, match="no dataset file"):
        MATH500().load(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(PplEcmhError, match="unsupported dataset file type"):
        MATH500().load(str(tmp_path / "data.txt"))
    with pytest.raises(ValueError, match="task"):
        get_task("nonsense")


def test_csv_and_parquet_sources_load(tmp_path):
    import pandas

    frame = pandas.DataFrame({"question": ["1+1?", "2+2?"], "answer": ["work #### 2", "work #### 4"]})
    frame.to_csv(tmp_path / "gsm.csv", index=False)
    assert [p.answer for p in GSM8K().load(str(tmp_path / "gsm.csv"))] == ["2", "4"]
    try:
        frame.to_parquet(tmp_path / "gsm.parquet")
    except ImportError:
        pytest.skip("no parquet engine installed")
    assert [p.answer for p in GSM8K().load(str(tmp_path / "gsm.parquet"))] == ["2", "4"]


FIXTURE = Path(__file__).parent / "fixtures" / "gpqa_sample.csv"


def test_gpqa_choices_are_shuffled_reproducibly_and_graded_by_letter():
    from ppl_ecmh.tasks import GPQA

    problems = GPQA().load(str(FIXTURE))
    assert [p.id for p in problems] == ["recA", "recB", "recC"]
    again = GPQA().load(str(FIXTURE))
    assert [p.metadata["choices"] for p in problems] == [p.metadata["choices"] for p in again]
    other_seed = [GPQA(shuffle_seed=s).load(str(FIXTURE))[0].answer for s in range(12)]
    assert len(set(other_seed)) > 1  # the correct answer's letter moves with the seed
    first = problems[0]
    assert first.metadata["choices"]["ABCD".index(first.answer)] == "Photon"
    prompt = GPQA().prompt(first)
    assert f"{first.answer}) Photon" in prompt and prompt.endswith("within \\boxed{}.")
    wrong = "ABCD"[("ABCD".index(first.answer) + 1) % 4]
    task = GPQA()
    assert task.grade(f"... \\boxed{{{first.answer}}}", first) == (first.answer, True)
    assert task.grade(f"... \\boxed{{({first.answer})}}", first)[1]
    assert task.grade(f"so the answer is ({first.answer}).", first)[1]
    assert task.grade(f"\\boxed{{{wrong}}}", first) == (wrong, False)
    assert task.grade("\\boxed{Photon}", first) == (None, False)
