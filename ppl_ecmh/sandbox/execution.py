"""Run untrusted Python in a confined child interpreter and collect what it reports, never trusting it.

The program runs in a fresh temporary directory with a clean environment, in its own session, under
the layers of `layers.py`. Its standard output and error are pipes read here with a size limit; its
result channel is a third pipe, whose frames are parsed as plain JSON and bounded in size. At the
time limit the process group and cgroup are killed; when this process dies, the child is killed by
its parent-death signal, and whatever it left (its directory, its cgroups) is removed by the next
grader that starts.
"""

from __future__ import annotations

import array
import dataclasses
import fcntl
import functools
import json
import math
import os
import re
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from ppl_ecmh.sandbox import cgroups

CHILD = Path(__file__).with_name("child.py")
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL, FS_APPEND_FL = 0x80086601, 0x40086602, 0x10, 0x20
OUTPUT_TAIL = 2000  # characters of stdout/stderr kept in a result
RESULT_BYTES = 16 << 20  # the most the result channel may carry; more is the program's fail
WATCH_INTERVAL_S = 0.5  # how often a run's `watch` sees its outputs
WORKDIR_PREFIX = "ppl-ecmh-sandbox-"
WORKDIR_NAME = re.compile(WORKDIR_PREFIX + r"(\d+)-")


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 1024  # per process (address space), and for the whole sandbox (memory cgroup)
    file_size_mb: int = 16  # per file
    disk_mb: int = 64  # all files written together (a tmpfs of this size is the working directory)
    open_files: int = 64
    processes: int = 16  # per user, and for the whole sandbox (pids cgroup)

    def for_child(self) -> dict:
        return dict(memory_mb=self.memory_mb, cpu_seconds=math.ceil(self.timeout_s) + 1,
                    file_size_mb=self.file_size_mb, disk_mb=self.disk_mb, open_files=self.open_files,
                    processes=self.processes)


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """What a run reported. `completed` is the program's claim that it ran to its end, never a
    grade: the grade comes from checking `outputs` outside the sandbox."""

    # "completed" (ran to its end), "failed" (an exception, a limit, outputs over RESULT_BYTES),
    # "exited_early" (status 0 before its end: `exit()`, `os._exit(0)` and kin), "timeout", or
    # "stopped" (by the caller's `watch`)
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    layers: tuple[str, ...]  # confinement layers that were in force
    outputs: tuple = ()  # the outcome of each call that returned, in order: {"value"|"raised"|"unencodable": ...}
    sandbox_error: str | None = None  # the sandbox's own failure (nothing ran, or cleanup failed), not the program's

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def outcome(self) -> str:
        """`status`, or "sandbox_error" for a fail that says nothing of the program."""
        return "sandbox_error" if self.sandbox_error is not None else self.status


Watch = Callable[[tuple], bool]  # called with the outputs so far while a run goes on; True stops it


def run_python(program: str, limits: Limits = Limits(), entry_point: str | None = None,
               calls: Sequence[str] = (), watch: Watch | None = None) -> ExecutionResult:
    """Run `program` as a script under `limits`; then, if `entry_point` is given, call that function
    on each of `calls` (arguments encoded by `values.encode((args, kwargs))`) and return what each
    call gave. `watch`, if given, sees the outputs so far every WATCH_INTERVAL_S while the run goes
    on, and may stop it. Never raises (a failure of the sandbox itself is a failed run with its
    reason in `stderr`), and leaves nothing behind."""
    remove_leftovers()
    workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
    try:
        result = _run(program, limits, entry_point, list(calls), watch, workdir)
    except OSError as error:
        result = ExecutionResult("failed", None, "", f"sandbox: {error}", 0.0, (), sandbox_error=str(error))
    if not _remove_tree(workdir):
        reason = f"could not remove {workdir}"
        result = dataclasses.replace(result, status="failed", stderr=result.stderr + f"\nsandbox: {reason}",
                                     sandbox_error=reason)
    return result


def _run(program: str, limits: Limits, entry_point: str | None, calls: list[str], watch: Watch | None,
         workdir: str) -> ExecutionResult:
    Path(workdir, "program.py").write_text(program, encoding="utf-8")
    Path(workdir, "request.json").write_text(json.dumps({"entry_point": entry_point, "calls": calls}))
    run_as = _unprivileged_uid()
    if run_as is not None:
        os.chown(workdir, run_as, run_as)
    groups = cgroups.Cgroups.create({"pids": limits.processes, "memory": limits.memory_mb << 20})
    result_read, result_write = os.pipe()
    config = dict(program=str(Path(workdir, "program.py")), request=str(Path(workdir, "request.json")),
                  limits=limits.for_child(), readable=readable_paths(), cgroups=groups.procs_files(),
                  result_fd=result_write, run_as=run_as, grader_pid=os.getpid(), seccomp_binding=_seccomp_binding())
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "PYTHONIOENCODING": "utf-8"}
    started = time.perf_counter()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(CHILD), json.dumps(config)], cwd=workdir, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            pass_fds=(result_write,))
    except BaseException:
        os.close(result_read)
        groups.kill_and_remove()
        raise
    finally:
        os.close(result_write)
    channel = _Channel()
    try:
        ended = _read_until_exit(process, result_read, channel, started, started + limits.timeout_s, watch)
    finally:
        os.close(result_read)
        _kill_group(process)
        groups.kill_and_remove()
    seconds = time.perf_counter() - started
    stdout, stderr = (output.decode("utf-8", "replace")[-OUTPUT_TAIL:] for output in channel.text)
    layers = channel.layers()
    if layers is None:
        return ExecutionResult("failed", process.returncode, stdout, stderr, seconds, (),
                               sandbox_error="the harness ended before it confined itself")
    outputs, end = channel.outputs()
    if ended != "exited":
        return ExecutionResult(ended, None, stdout, stderr, seconds, layers, outputs)
    if channel.overflowed:
        stderr += f"\nsandbox: the outputs exceeded {RESULT_BYTES >> 20} MB"
    if process.returncode == 0 and end == len(calls) == len(outputs) and not channel.overflowed:
        status = "completed"
    else:
        status = "exited_early" if process.returncode == 0 and end is None and not channel.overflowed else "failed"
    return ExecutionResult(status, process.returncode, stdout, stderr, seconds, layers, outputs)


class _Channel:
    """What the child wrote: the last bytes of its stdout and stderr, and its result frames parsed
    as they arrive (a frame is an 8-byte length, then a JSON object). A garbled frame ends the
    frames; more than RESULT_BYTES overflows the channel."""

    def __init__(self):
        self.text = [b"", b""]  # stdout, stderr
        self.frames: list[dict] = []
        self.buffer, self.received, self.broken, self.overflowed = b"", 0, False, False

    def feed_text(self, index: int, chunk: bytes) -> None:
        self.text[index] = (self.text[index] + chunk)[-4 * OUTPUT_TAIL:]

    def feed_result(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self.overflowed = self.received > RESULT_BYTES
        if self.broken or self.overflowed:
            return
        self.buffer += chunk
        while len(self.buffer) >= 8:
            (length,) = struct.unpack(">Q", self.buffer[:8])
            if len(self.buffer) < 8 + length:
                return
            body, self.buffer = self.buffer[8:8 + length], self.buffer[8 + length:]
            try:
                frame = json.loads(body)
            except (ValueError, RecursionError):
                frame = None
            if not isinstance(frame, dict):
                self.broken = True
                return
            self.frames.append(frame)

    def layers(self) -> tuple[str, ...] | None:
        first = self.frames[0] if self.frames else {}
        return tuple(map(str, first["layers"])) if isinstance(first.get("layers"), list) else None

    def outputs(self) -> tuple[tuple, int | None]:
        """The call outcomes so far, and the call count of the end frame (None before it)."""
        outputs = []
        for frame in self.frames[1:]:
            if "end" in frame:
                return tuple(outputs), frame["end"]
            outputs.append(frame)
        return tuple(outputs), None


def _read_until_exit(process: subprocess.Popen, result_fd: int, channel: _Channel, started: float,
                     deadline: float, watch: Watch | None) -> str:
    """Feed `channel` until the child's pipes close and it exits: "exited", "timeout" at the
    deadline, or "stopped" when `watch` says so."""
    streams = {process.stdout.fileno(): lambda chunk: channel.feed_text(0, chunk),
               process.stderr.fileno(): lambda chunk: channel.feed_text(1, chunk), result_fd: channel.feed_result}
    next_watch, watched = started + WATCH_INTERVAL_S, 0
    with selectors.DefaultSelector() as selector:
        for fd, feed in streams.items():
            selector.register(fd, selectors.EVENT_READ, feed)
        while selector.get_map():
            now = time.perf_counter()
            if now >= deadline:
                return "timeout"
            if watch is not None and now >= next_watch:
                outputs, _ = channel.outputs()
                if len(outputs) > watched and watch(outputs):
                    return "stopped"
                next_watch, watched = time.perf_counter() + WATCH_INTERVAL_S, len(outputs)
            exited = process.poll() is not None  # then a descendant may still hold its pipes: take what is there
            events = selector.select(timeout=0 if exited else min(deadline, next_watch) - now)
            if not events and exited:
                break
            for key, _ in events:
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    key.data(chunk)
                else:
                    selector.unregister(key.fd)
    try:
        process.wait(timeout=max(deadline - time.perf_counter(), 0))
    except subprocess.TimeoutExpired:
        return "timeout"
    return "exited"


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    for stream in (process.stdout, process.stderr):
        stream.close()


@functools.cache
def remove_leftovers() -> None:
    """Once per grader process: remove the directories and cgroups of sandboxes whose grader died
    without cleaning up (killed, say), recognised by the dead grader's pid in their names."""
    directory = Path(tempfile.gettempdir())
    for path in directory.glob(WORKDIR_PREFIX + "*"):
        match = WORKDIR_NAME.match(path.name)
        if match and not _alive(int(match.group(1))):
            _remove_tree(str(path))
    cgroups.remove_leftovers(_alive)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_tree(path: str) -> bool:
    """Remove a sandbox directory whatever the program did to it (read-only modes, immutable or
    append-only flags); False if something is left."""

    def unlock_and_retry(function, name, _):
        for target in (os.path.dirname(name), name):
            _clear_inode_flags(target)
            try:
                os.chmod(target, 0o700, follow_symlinks=False)
            except (OSError, NotImplementedError):
                pass
        function(name)

    try:
        shutil.rmtree(path, onerror=unlock_and_retry)
    except OSError:
        return not os.path.exists(path)
    return True


def _clear_inode_flags(path: str) -> None:
    """Clear the immutable and append-only flags of a file or directory (chattr -i -a)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags[0] & ~(FS_IMMUTABLE_FL | FS_APPEND_FL)))
    except OSError:
        pass
    finally:
        os.close(fd)


def _seccomp_binding() -> str | None:
    """The folder of the pyseccomp module (libseccomp through ctypes), for the confined child,
    which sees no site-packages; None where it or libseccomp is missing."""
    try:
        import pyseccomp
    except (ImportError, OSError):
        return None
    return str(Path(pyseccomp.__file__).parent)


@functools.cache
def _unprivileged_uid() -> int | None:
    """The uid of `nobody` when this process is root and the interpreter's files are readable by
    every user (else the child stays uid 0, without capabilities)."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        uid = pwd.getpwnam("nobody").pw_uid
    except (ImportError, KeyError):
        return None
    return uid if all(_readable_by_others(Path(path)) for path in readable_paths()) else None


def _readable_by_others(path: Path) -> bool:
    if not path.exists():
        return True
    if not os.stat(path).st_mode & (0o005 if path.is_dir() else 0o004):
        return False
    return all(os.stat(parent).st_mode & 0o001 for parent in path.resolve().parents)


PACKAGE_FOLDERS = ("site-packages", "dist-packages")
LIBRARY_ROOTS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")


@functools.cache
def readable_paths() -> tuple[str, ...]:
    """What the confined interpreter may read: its standard library without the installed packages
    (which hold the project, its task data and every answer key), the system's shared libraries
    (the architecture's library folder and the libraries directly in each library root, never the
    Python folders beside them), and a few system files."""
    stdlib = sysconfig.get_path("stdlib")
    paths = [os.path.join(stdlib, name) for name in os.listdir(stdlib) if name not in PACKAGE_FOLDERS]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    for root in LIBRARY_ROOTS:
        if multiarch and os.path.isdir(os.path.join(root, multiarch)):
            paths.append(os.path.join(root, multiarch))
        try:
            names = os.listdir(root)
        except OSError:
            continue
        paths += [os.path.join(root, name) for name in names
                  if ".so" in name and os.path.isfile(os.path.join(root, name))]
    paths += [os.path.realpath(sys.executable), "/etc/ld.so.cache", "/etc/localtime", "/usr/share/zoneinfo",
              "/dev/null", "/dev/urandom"]
    return tuple(sorted(set(paths)))
