"""The trusted side of differential grading: a test's own checks, run against a program's recorded outputs.

Runs as `python -s -B referee.py MEMORY_MB` with a clean environment, a process that never executes model-written code. Each request
(one JSON line on stdin) holds the test's code, the name of its check function, and the calls of
the candidate function recorded so far with the outputs the sandboxed program gave for them. The
referee runs the check with `candidate` replaced by a stub that replays those outputs, and answers
(one JSON line on its own channel) with either a verdict, when the check asked for nothing that
was not recorded, or the calls it needs next:

1. The verdict pass runs the check as written. Every value it sees is an output the program really
   gave; if the check returns, the program passed, and if it raises before asking for an unrecorded
   call, it failed.
2. When it asks for an unrecorded call, a collecting pass runs the check again with each `assert`
   evaluated but not enforced, answering unrecorded calls with a placeholder, and so gathers the
   calls the rest of the check makes. Those are run in the sandbox and the request comes back.

Outputs are looked up by the call's arguments (HumanEval's candidates are functions), so a check
that repeats a call, say in an assertion's message, needs nothing new. Each pass starts from a fresh
namespace with `random` seeded alike, so a check that draws random inputs asks for the same calls
every time. Every round records at least one more call, so the rounds end.
"""

import ast
import builtins
import ctypes
import json
import os
import random
import resource
import signal
import sys

import values  # this script's own folder is first on its path

PR_SET_PDEATHSIG = 1
SEED = 0
DETAIL_CHARACTERS = 300


class UnplainOutput(BaseException):
    """The program returned something that is not plain data. A BaseException, so that a check's
    own `except Exception` cannot swallow it: such an output fails whatever the check catches."""


class Unrecorded(BaseException):
    """The check asked for a call that was not recorded (verdict pass only). A BaseException, and
    noted by the stub as well, so that a check that catches it still gives no verdict."""


class Placeholder:
    """Stands for an unrecorded output in a collecting pass: it compares equal to anything, is
    truthy, iterates as empty and absorbs arithmetic, so the check goes on to ask for more calls."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __lt__ = __le__ = __gt__ = __ge__ = __contains__ = __eq__

    def __bool__(self):
        return True

    def __len__(self):
        return 0

    def __iter__(self):
        return iter(())

    def __index__(self):
        return 0

    __int__ = __hash__ = __index__

    def __float__(self):
        return 0.0

    def __getitem__(self, key):
        return self


for _operator in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift",
                  "rshift", "matmul"):
    setattr(Placeholder, f"__{_operator}__", Placeholder.__call__)
    setattr(Placeholder, f"__r{_operator}__", Placeholder.__call__)
for _operator in ("neg", "pos", "abs", "invert", "round", "floor", "ceil", "trunc"):
    setattr(Placeholder, f"__{_operator}__", Placeholder.__call__)


class Replay:
    """The `candidate` a check receives: the recorded output of a call with the same arguments."""

    def __init__(self, calls, outputs, collecting):
        self.recorded = dict(zip(calls, outputs))
        self.collecting = collecting
        self.unrecorded = {}  # arguments asked for that were not recorded, in the order first asked

    def __call__(self, *args, **kwargs):
        try:
            call = values.encode((args, kwargs))
        except values.Unencodable as error:
            raise RuntimeError(f"the test passes the candidate an argument that is not plain data: {error}")
        if call in self.recorded:
            return replayed(self.recorded[call])
        self.unrecorded.setdefault(call)
        if self.collecting:
            return Placeholder()
        raise Unrecorded()


def replayed(outcome):
    if "value" in outcome:
        try:
            return values.from_plain(outcome["value"], 0)
        except values.Unencodable as error:
            raise UnplainOutput(str(error)) from None
    if "raised" in outcome:
        kind = getattr(builtins, str(outcome["raised"]), None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            raise kind("raised by the program")
        raise RuntimeError(f"the program raised {str(outcome['raised'])[:80]}")
    raise UnplainOutput(str(outcome.get("unencodable", "a malformed output"))[:DETAIL_CHARACTERS])


class UnenforcedAsserts(ast.NodeTransformer):
    """`assert test, message` becomes `if not test: message`: both evaluated as the check would
    evaluate them (a message may call the candidate too), but nothing raised."""

    def visit_Assert(self, node):
        test = self.visit(node.test)
        if node.msg is None:
            return ast.copy_location(ast.Expr(test), node)
        negated = ast.UnaryOp(ast.Not(), test)
        return ast.copy_location(ast.If(negated, [ast.Expr(self.visit(node.msg))], []), node)


def run_check(request, candidate):
    tree = ast.parse(request["test"], "<test>")
    if candidate.collecting:
        tree = ast.fix_missing_locations(UnenforcedAsserts().visit(tree))
    random.seed(SEED)
    namespace = {"__name__": "__referee__"}
    exec(compile(request.get("setup", ""), "<setup>", "exec"), namespace)
    exec(compile(tree, "<test>", "exec"), namespace)
    if request.get("entry_point"):  # as where the test runs beside the program: its name is the candidate
        namespace[request["entry_point"]] = candidate
    namespace[request["check"]](candidate)


def judge(request):
    calls, outputs = request["calls"], request["outputs"]
    candidate, failure = Replay(calls, outputs, collecting=False), None
    try:
        run_check(request, candidate)
    except BaseException as error:  # noqa: BLE001 - every way a check ends early is a fail
        failure = error
    if not candidate.unrecorded:
        if failure is None:
            return {"verdict": "passed"}
        return {"verdict": "failed", "detail": f"{type(failure).__name__}: {failure}"[:DETAIL_CHARACTERS]}
    collector = Replay(calls, outputs, collecting=True)
    try:
        run_check(request, collector)
    except BaseException:  # noqa: BLE001 - a placeholder the check could not use: what it asked until then
        pass
    return {"calls": list(collector.unrecorded)}


def main():
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    memory = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what the test prints must not reach the channel
    for line in sys.stdin:
        answer = judge(json.loads(line))
        channel.write(json.dumps(answer) + "\n")
        channel.flush()


if __name__ == "__main__":
    main()
