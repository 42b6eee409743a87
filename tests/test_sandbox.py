"""Model-written code runs confined: every malicious program fails its grade and the parent is unharmed."""

import fcntl
import os
import socket
import struct
import tempfile
import time

import pytest

from ppl_ecmh import sandbox
from ppl_ecmh.sandbox import Limits, run_python

LIMITS = Limits(timeout_s=3.0, memory_mb=512)
SECRET = "PPL_ECMH_PARENT_SECRET"


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert run_python("assert sum(range(4)) == 6\nprint('ok')", LIMITS).passed
    result = run_python("assert sum(range(4)) == 7", LIMITS)
    assert result.status == "failed" and "AssertionError" in result.stderr and result.outcome == "failed"


def test_a_program_that_does_not_compile_is_the_programs_fail_not_the_sandboxs():
    result = run_python("print(sorted([3, 1,\n", LIMITS)  # a completion cut off at its token limit
    assert result.outcome == "failed" and result.sandbox_error is None and result.layers
    assert "SyntaxError" in result.stderr


# Each exits with status 0 before the line after it runs; none of them may count as a pass.
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
    "fork": "import os, time\nif os.fork():\n    os._exit(0)\ntime.sleep(5)",
}


# `exit` and `quit` come from the site module, which the sandbox does not load: they raise NameError.
WITHOUT_SITE = {"exit", "quit", "exit in a function", "exit in a __main__ block"}


def early_exit_outcome(name: str) -> str:
    return "failed" if name in WITHOUT_SITE else "exited_early"


@pytest.mark.parametrize("name, program", EARLY_EXITS.items(), ids=EARLY_EXITS.keys())
def test_an_exit_with_status_zero_before_the_end_is_a_fail(name, program):
    result = run_python(program + "\nprint('reached the end')", LIMITS)
    assert not result.passed and "reached the end" not in result.stdout
    assert result.status == "failed" and result.outcome == early_exit_outcome(name)
    assert (result.outcome == "failed") == ("NameError" in result.stderr)


def test_a_program_that_runs_to_its_end_passes_whatever_it_left_registered():
    program = "import atexit, os\natexit.register(lambda: os._exit(3))\nprint('done')"
    result = run_python(program, LIMITS)  # the harness leaves before atexit handlers run
    assert result.passed and result.stdout.strip() == "done"


def test_ordinary_standard_library_code_runs():
    program = "import collections, functools, hashlib, heapq, itertools, json, math, random, re, string\n" \
              "assert math.gcd(12, 18) == 6 and hashlib.md5(b'').hexdigest().startswith('d41d')"
    assert run_python(program, LIMITS).passed


def test_an_infinite_loop_is_killed_at_the_time_limit():
    started = time.perf_counter()
    result = run_python("while True:\n    pass", LIMITS)
    assert result.status == "timeout" and time.perf_counter() - started < LIMITS.timeout_s + 2


def test_a_detached_child_process_does_not_outlive_the_timeout():
    program = ("import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    time.sleep(60)\n"
               "print(pid, flush=True)\ntime.sleep(60)")
    result = run_python(program, LIMITS)
    assert result.status == "timeout"
    _require("pids-cgroup", result)  # setsid leaves the process group; only the cgroup still holds it
    orphan = int(result.stdout.split()[0])
    time.sleep(0.2)
    assert not _alive(orphan)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_fork_bomb_fails_without_exhausting_the_machine():
    result = run_python("import os\nwhile True:\n    os.fork()", LIMITS)
    assert not result.passed
    assert os.fork  # the parent can still create processes
    assert run_python("print(1)", LIMITS).passed


def test_a_huge_allocation_fails():
    result = run_python("block = bytearray(8 * 1024 ** 3)\nprint(len(block))", LIMITS)
    assert result.status == "failed" and "MemoryError" in result.stderr


def test_a_huge_file_fails_at_the_file_size_limit():
    result = run_python("open('big', 'wb').write(b'x' * (64 * 1024 * 1024))", LIMITS)
    assert result.status == "failed"


def test_the_memory_limit_holds_for_the_whole_sandbox_not_each_process():
    program = ("import os, time\npids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
               "        block = bytearray(300 * 1024 ** 2)\n        time.sleep(1)\n        os._exit(0)\n"
               "    pids.append(pid)\nassert all(os.waitpid(pid, 0)[1] == 0 for pid in pids)")
    result = run_python(program, LIMITS)  # 4 x 300 MB, each under the 512 MB limit, together over it
    _require("memory-cgroup", result)
    assert result.status == "failed"


def test_the_bytes_written_are_capped_for_the_whole_sandbox_not_each_file():
    program = "for i in range(40):\n    open(f'part{i}', 'wb').write(b'x' * (15 * 1024 ** 2))"
    result = run_python(program, LIMITS)  # 40 files of 15 MB, each under the file-size limit
    _require("private-disk", result)
    assert result.status == "failed" and "No space left" in result.stderr
    assert run_python("open('small', 'wb').write(b'x' * (15 * 1024 ** 2))", LIMITS).passed


def test_writing_outside_the_working_directory_fails(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('escaped')", LIMITS)
    _require("landlock", result)
    assert result.status == "failed" and not target.exists()


def test_writing_inside_the_working_directory_works():
    assert run_python("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'", LIMITS).passed


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

    monkeypatch.setattr(sandbox.subprocess, "Popen", no_interpreter)
    result = run_python("print(1)", LIMITS)
    assert result.status == "failed" and "sandbox: no interpreter" in result.stderr
    assert result.outcome == "sandbox_error" and result.sandbox_error == "no interpreter"
    assert _sandbox_directories() == before


def test_a_run_whose_directory_cannot_be_removed_is_a_sandbox_error_not_an_early_exit(monkeypatch):
    remove_tree = sandbox._remove_tree
    monkeypatch.setattr(sandbox, "_remove_tree", lambda path: remove_tree(path) and False)
    result = run_python("print(1)", LIMITS)  # ran to its end with status 0
    assert result.status == "failed" and result.returncode == 0 and not result.exited_early
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
    assert sandbox._remove_tree(str(directory)) and not directory.exists()


def _require(layer: str, result) -> None:
    if layer not in result.layers:
        pytest.skip(f"this kernel does not provide the {layer} layer (have {result.layers})")
