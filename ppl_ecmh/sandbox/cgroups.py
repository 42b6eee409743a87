"""The sandbox's cgroups: they cap the process count and the memory of a whole sandbox (resource
limits are per process, and a fork bomb as root ignores RLIMIT_NPROC).

One cgroup per controller in cgroup v1, or one for all in v2, made where this process may. Each is
named after the grader's pid, so one a killed grader left behind can be told apart from one a live
grader is using, and removed by the next start (`remove_leftovers`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import tempfile
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
# controller: its limit file in cgroup v1, and in cgroup v2
LIMIT_FILES = {"pids": ("pids.max", "pids.max"), "memory": ("memory.limit_in_bytes", "memory.max")}
NAME = re.compile(r"ppl-ecmh-(\d+)-")


@dataclasses.dataclass
class Cgroups:
    paths: dict[str, Path]  # controller -> the cgroup directory that caps it

    @classmethod
    def create(cls, limits: dict[str, int]) -> "Cgroups":
        paths = {}
        for controller, value in limits.items():  # cgroup v1: a hierarchy per controller
            hierarchy = ROOT / controller
            if hierarchy.is_dir() and (path := _make(hierarchy, {LIMIT_FILES[controller][0]: value})):
                paths[controller] = path
        unified, missing = own_unified_cgroup(), [c for c in limits if c not in paths]
        if unified is not None and missing:  # cgroup v2: one cgroup, the controllers delegated to us
            delegated = (unified / "cgroup.subtree_control").read_text(errors="ignore").split()
            usable = [c for c in missing if c in delegated]
            if usable and (path := _make(unified, {LIMIT_FILES[c][1]: limits[c] for c in usable})):
                paths |= dict.fromkeys(usable, path)
        return cls(paths)

    def procs_files(self) -> dict[str, str]:
        """Layer name -> the cgroup.procs file the child joins it by."""
        return {f"{controller}-cgroup": str(path / "cgroup.procs") for controller, path in self.paths.items()}

    def kill_and_remove(self) -> None:
        for path in set(self.paths.values()):
            kill_and_remove(path)


def _make(parent: Path, limits: dict[str, int]) -> Path | None:
    try:
        path = Path(tempfile.mkdtemp(prefix=f"ppl-ecmh-{os.getpid()}-", dir=parent))
    except OSError:
        return None
    try:
        for name, value in limits.items():
            (path / name).write_text(str(value))
    except OSError:
        path.rmdir()
        return None
    return path


def kill_and_remove(path: Path) -> None:
    """Kill every process of a cgroup (at once through cgroup.kill where v2 has it) and remove it,
    which fails while a killed process is still exiting, hence the retries."""
    try:
        (path / "cgroup.kill").write_text("1")
    except OSError:
        pass
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


def remove_leftovers(alive) -> list[Path]:
    """Kill and remove the sandbox cgroups of graders that are gone; the paths removed."""
    parents = [ROOT / controller for controller in LIMIT_FILES]
    if (unified := own_unified_cgroup()) is not None:
        parents.append(unified)
    removed = []
    for parent in parents:
        try:
            entries = list(parent.iterdir())
        except OSError:
            continue
        for path in entries:
            match = NAME.match(path.name)
            if match and path.is_dir() and not alive(int(match.group(1))):
                kill_and_remove(path)
                removed.append(path)
    return removed


def own_unified_cgroup() -> Path | None:
    """This process's cgroup in a cgroup v2 hierarchy, or None."""
    try:
        own = Path(open("/proc/self/cgroup").read().split("::", 1)[1].strip()).relative_to("/")
    except (OSError, IndexError, ValueError):
        return None
    path = ROOT / own
    return path if (path / "cgroup.subtree_control").exists() else None
