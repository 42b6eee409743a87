"""Run untrusted Python (model-written code) confined, and grade it without trusting it.

- `run_python` (`execution.py`) runs a program in a child interpreter that confines itself first
  (`layers.py`: cgroups, namespaces, Landlock, no capabilities, a default-deny seccomp filter,
  resource limits) and reports, as plain data on a channel of its own, what its function returned
  on given inputs.
- `check_function` (`differential.py`) grades: the referee (`referee.py`), a process that never
  runs model-written code, replays those outputs into the test's own checks.

What the sandbox promises, and what it does not, is written in docs/evaluation.md.
"""

from ppl_ecmh.sandbox.differential import Verdict, check_function
from ppl_ecmh.sandbox.execution import ExecutionResult, Limits, run_python

__all__ = ["ExecutionResult", "Limits", "Verdict", "check_function", "run_python"]
