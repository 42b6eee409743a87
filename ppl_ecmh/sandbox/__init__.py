"""Run untrusted Python (model-written code) in a confined subprocess, never in this process.

The program runs in a fresh temporary directory, in a new process session, with a clean environment
and the confinement layers of `ppl_ecmh.sandbox.child` (Linux: pids cgroup, network namespace, no
capabilities, seccomp, Landlock, resource limits). Output goes to files capped by the file-size
limit; on timeout the whole process group (and cgroup) is killed. `ExecutionResult.layers` says
which layers held, so a result is never silently less confined than it looks.

A pass means the program ran to its end: the harness reports that through a pipe, stamped with a
per-run nonce, after the last statement returns. An exit status of 0 alone is not a pass.
"""

from __future__ import annotations

import array
import dataclasses
import fcntl
import json
import math
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

CHILD = Path(__file__).with_name("child.py")
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL, FS_APPEND_FL = 0x80086601, 0x40086602, 0x10, 0x20
OUTPUT_TAIL = 2000  # characters of stdout/stderr kept in a result


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
    status: str  # "passed" (ran to its end), "failed" (an exception, any early exit, a limit) or "timeout"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    layers: tuple[str, ...]  # confinement layers that were in force
    sandbox_error: str | None = None  # the sandbox's own failure (nothing ran, or cleanup failed), not the program's

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def exited_early(self) -> bool:
        """Exit status 0 without running to the end: `exit()`, `sys.exit(0)`, `os._exit(0)` and kin."""
        return self.status == "failed" and self.returncode == 0 and self.sandbox_error is None

    @property
    def outcome(self) -> str:
        """Why the run passed or not, for counting: "passed", "failed", "timeout", "exited_early"
        or "sandbox_error" (a fail that says nothing of the program)."""
        if self.sandbox_error is not None:
            return "sandbox_error"
        return "exited_early" if self.exited_early else self.status


def run_python(program: str, limits: Limits = Limits()) -> ExecutionResult:
    """Run `program` as a script under `limits`. It passes if its last statement returns: an
    exception, a limit or any exit before the end (whatever its status) is a fail. So is a failure
    of the sandbox itself, with its reason in `stderr`: grading never raises, and leaves nothing
    behind in the temporary directory."""
    private = tempfile.mkdtemp(prefix="ppl-ecmh-run-")
    workdir = tempfile.mkdtemp(prefix="ppl-ecmh-sandbox-")
    try:
        result = _run(program, limits, private, workdir)
    except OSError as error:
        result = ExecutionResult("failed", None, "", f"sandbox: {error}", 0.0, (), sandbox_error=str(error))
    left = [directory for directory in (workdir, private) if not _remove_tree(directory)]
    if left:
        reason = f"could not remove {', '.join(left)}"
        result = dataclasses.replace(result, status="failed", stderr=result.stderr + f"\nsandbox: {reason}",
                                     sandbox_error=reason)
    return result


def _run(program: str, limits: Limits, private: str, workdir: str) -> ExecutionResult:
    program_path = Path(workdir, "program.py")
    program_path.write_text(program, encoding="utf-8")
    cgroups = _Cgroups.create({"pids": limits.processes, "memory": limits.memory_mb << 20})
    nonce = secrets.token_hex(16).encode()
    result_read, result_write = os.pipe()
    run_as = _unprivileged_uid()
    if run_as is not None:
        os.chown(workdir, run_as, run_as)
    config = dict(program=str(program_path), limits=limits.for_child(), readable=_interpreter_paths(),
                  cgroups=cgroups.procs_files(), result_fd=result_write, run_as=run_as,
                  seccomp_binding=_seccomp_binding())
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "PYTHONIOENCODING": "utf-8"}
    out_path, err_path = Path(private, "stdout"), Path(private, "stderr")
    started, error = time.perf_counter(), None
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", str(CHILD), json.dumps(config)], cwd=workdir, env=env,
                stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True, pass_fds=(result_write,))
        except BaseException:
            os.close(result_read)
            raise
        finally:
            os.close(result_write)
        try:
            process.stdin.write(nonce)
            process.stdin.close()
            returncode = process.wait(timeout=limits.timeout_s)
            ran_to_end = _read_available(result_read) == nonce
            status = "passed" if returncode == 0 and ran_to_end else "failed"
        except subprocess.TimeoutExpired:
            returncode, status = None, "timeout"
        except BrokenPipeError:  # the child died before reading its nonce: nothing ran
            returncode, status = process.wait(), "failed"
            error = "the harness ended before it read its nonce"
        finally:
            os.close(result_read)
            _kill_group(process)
            cgroups.kill_and_remove()
    seconds = time.perf_counter() - started
    header, _, stdout = _read_tail(out_path, whole=True).partition("\n")
    try:
        layers = tuple(json.loads(header))
    except ValueError:  # the child died before confining itself: nothing ran
        layers, stdout = (), header + stdout
        error = error or "the harness ended before it confined itself"
    return ExecutionResult(status, returncode, stdout[-OUTPUT_TAIL:], _read_tail(err_path), seconds, layers, error)


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


def _read_available(fd: int) -> bytes:
    """What a pipe holds now, without waiting for writers that may still hold it open (a forked
    grandchild): the harness writes its few bytes before it exits."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1024)
    except BlockingIOError:
        return b""


def _read_tail(path: Path, whole: bool = False) -> str:
    data = path.read_bytes()
    return data.decode("utf-8", "replace") if whole else data[-OUTPUT_TAIL:].decode("utf-8", "replace")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _seccomp_binding() -> str | None:
    """The folder of the pyseccomp module (libseccomp through ctypes), for the confined child,
    which sees no site-packages; None where it or libseccomp is missing."""
    try:
        import pyseccomp
    except (ImportError, OSError):
        return None
    return str(Path(pyseccomp.__file__).parent)


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
    return uid if all(_readable_by_others(Path(path)) for path in _interpreter_paths()) else None


def _readable_by_others(path: Path) -> bool:
    if not path.exists():
        return True
    if not os.stat(path).st_mode & (0o005 if path.is_dir() else 0o004):
        return False
    return all(os.stat(parent).st_mode & 0o001 for parent in path.resolve().parents)


def _interpreter_paths() -> list[str]:
    """What the confined interpreter may read: its standard library and the system's shared libraries."""
    paths = {sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib"), os.path.realpath(sys.executable),
             "/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache", "/etc/localtime",
             "/usr/share/zoneinfo", "/dev/null", "/dev/urandom"}
    return sorted(path for path in paths if path)


# controller: its limit file in cgroup v1, and in cgroup v2
CGROUP_LIMIT_FILES = {"pids": ("pids.max", "pids.max"), "memory": ("memory.limit_in_bytes", "memory.max")}


@dataclasses.dataclass
class _Cgroups:
    """The sandbox's cgroups, one per controller in cgroup v1 or one for all in v2, where this
    process may make them: they cap the whole process tree (resource limits are per process, and
    a fork bomb as root ignores RLIMIT_NPROC)."""

    paths: dict[str, Path]  # controller -> the cgroup directory that caps it

    @classmethod
    def create(cls, limits: dict[str, int]) -> "_Cgroups":
        paths = {}
        for controller, value in limits.items():  # cgroup v1: a hierarchy per controller
            hierarchy = Path("/sys/fs/cgroup", controller)
            if hierarchy.is_dir() and (path := _make_cgroup(hierarchy, {CGROUP_LIMIT_FILES[controller][0]: value})):
                paths[controller] = path
        unified, missing = _own_unified_cgroup(), [c for c in limits if c not in paths]
        if unified is not None and missing:  # cgroup v2: one cgroup, the controllers delegated to us
            delegated = (unified / "cgroup.subtree_control").read_text(errors="ignore").split()
            usable = [c for c in missing if c in delegated]
            if usable and (path := _make_cgroup(unified, {CGROUP_LIMIT_FILES[c][1]: limits[c] for c in usable})):
                paths |= dict.fromkeys(usable, path)
        return cls(paths)

    def procs_files(self) -> dict[str, str]:
        """Layer name -> the cgroup.procs file the child joins it by."""
        return {f"{controller}-cgroup": str(path / "cgroup.procs") for controller, path in self.paths.items()}

    def kill_and_remove(self) -> None:
        for path in set(self.paths.values()):
            _kill_cgroup(path)


def _make_cgroup(parent: Path, limits: dict[str, int]) -> Path | None:
    try:
        path = Path(tempfile.mkdtemp(prefix="ppl-ecmh-", dir=parent))
    except OSError:
        return None
    try:
        for name, value in limits.items():
            (path / name).write_text(str(value))
    except OSError:
        path.rmdir()
        return None
    return path


def _kill_cgroup(path: Path) -> None:
    """Kill every process of a cgroup and remove it (which fails while a killed process is still
    exiting, hence the retries)."""
    for _ in range(200):
        try:
            pids = [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.01)


def _own_unified_cgroup() -> Path | None:
    """This process's cgroup in a cgroup v2 hierarchy, or None."""
    try:
        own = Path(open("/proc/self/cgroup").read().split("::", 1)[1].strip()).relative_to("/")
    except (OSError, IndexError, ValueError):
        return None
    path = Path("/sys/fs/cgroup") / own
    return path if (path / "cgroup.subtree_control").exists() else None
