"""Differential grading: untrusted code produces data, trusted code decides.

The program runs only in the sandbox, where it is asked to call its function on the test's inputs
and send back what each call returned, as plain data. The test runs only in the referee
(`referee.py`), a separate process that never executes model-written code: it runs the dataset's
own check with the candidate function replaced by a stub that replays those outputs, and asks for
another sandbox run when it reaches inputs not yet recorded. So the untrusted process never holds
the test, its expected values or any token of success, and nothing it does to itself (frames,
trace hooks, an object whose `__eq__` is always true) reaches the verdict.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from ppl_ecmh.sandbox.execution import Limits, run_python

REFEREE = Path(__file__).with_name("referee.py")
REFEREE_MEMORY_MB = 2048
MAX_ROUNDS = 32  # sandbox runs per grade; a check that keeps asking for new calls past this is not graded


class Verdict(NamedTuple):
    outcome: str  # "passed", "failed", "timeout", "exited_early" or "sandbox_error"
    detail: str  # why it did not pass: the check's exception, or the end of the program's stderr
    rounds: int  # sandbox runs it took
    layers: tuple[str, ...]  # the confinement layers of the last sandbox run

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


def check_function(program: str, entry_point: str, test: str, check: str = "check", setup: str = "",
                   limits: Limits = Limits()) -> Verdict:
    """Grade `program` by `check(entry_point)` from `test`, the two never in one process. `setup`
    is trusted code the test needs beside it (HumanEval's prompt, with its helpers). The sandbox
    runs of one grade share `limits.timeout_s`."""
    calls, outputs, layers, rounds = [], [], (), 0
    deadline = time.perf_counter() + limits.timeout_s

    def judge(more_calls=(), more_outputs=()):
        request = dict(setup=setup, test=test, check=check, entry_point=entry_point,
                       calls=calls + list(more_calls), outputs=outputs + list(more_outputs))
        return _referee.judge(request, limits.timeout_s)

    answer = judge()
    while "verdict" not in answer:
        if not answer["calls"] or rounds == MAX_ROUNDS:
            return Verdict("sandbox_error", f"the test asked for new calls in {rounds} rounds", rounds, layers)
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return Verdict("timeout", f"the program's calls took over {limits.timeout_s:g} s", rounds, layers)
        asked, decided = answer["calls"], {}

        def watch(partial):  # a verdict the outputs so far already settle ends the run early
            decided.update(judge(asked[:len(partial)], partial))
            return "verdict" in decided

        result = run_python(program, dataclasses.replace(limits, timeout_s=remaining), entry_point, asked, watch)
        rounds, layers = rounds + 1, result.layers
        if result.outcome == "stopped":
            answer = decided
        elif result.completed:
            calls, outputs = calls + asked, outputs + list(result.outputs)
            answer = judge()
        else:  # a verdict the outputs before the failure settle stands, as when the test stops at a failure
            settled = judge(asked[:len(result.outputs)], result.outputs) if result.outputs else {}
            if "verdict" in settled:
                return Verdict(settled["verdict"], settled.get("detail", ""), rounds, layers)
            return Verdict(result.outcome, result.stderr[-300:], rounds, layers)
    return Verdict(answer["verdict"], answer.get("detail", ""), rounds, layers)


class _Referee:
    """One long-lived referee process per grader process, started on first use and restarted after
    it times out or dies; requests are answered one at a time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.owner = None

    def judge(self, request: dict, timeout_s: float) -> dict:
        """The referee's answer: {"verdict": ..., "detail": ...} or {"calls": [...]}."""
        with self.lock:
            if self.process is None or self.process.poll() is not None or self.owner != os.getpid():
                self._start()
            try:
                self.process.stdin.write((json.dumps(request) + "\n").encode())
                self.process.stdin.flush()
                line = self._read_line(time.perf_counter() + timeout_s)
            except (OSError, ValueError):
                line = None
            if line is None:
                timed_out = self.process.poll() is None
                self.process.kill()
                self.process.wait()
                self.process = None
                if timed_out:
                    return {"verdict": "timeout", "detail": f"the test ran over {timeout_s:g} s on the program's outputs"}
                return {"verdict": "sandbox_error", "detail": "the referee died"}
            return json.loads(line)

    def _start(self) -> None:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}
        self.process = subprocess.Popen(
            [sys.executable, "-s", "-B", str(REFEREE), str(REFEREE_MEMORY_MB)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tempfile.gettempdir())
        self.owner = os.getpid()

    def _read_line(self, deadline: float) -> bytes | None:
        fd, data = self.process.stdout.fileno(), b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            data += chunk
        return data


_referee = _Referee()
