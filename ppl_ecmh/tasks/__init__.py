"""Benchmark tasks: problems loaded from local files or Hugging Face datasets, prompts, graders."""

from ppl_ecmh.tasks.base import Grade, Problem, Task
from ppl_ecmh.tasks.code import HumanEval
from ppl_ecmh.tasks.math import AIME, GSM8K, MATH500
from ppl_ecmh.tasks.multiple_choice import GPQA

TASKS = {task.name: task for task in (MATH500(), GSM8K(), AIME(), GPQA(), HumanEval())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["AIME", "GPQA", "GSM8K", "Grade", "HumanEval", "MATH500", "TASKS", "Problem", "Task", "get_task"]
