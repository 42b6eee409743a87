"""The sandbox's first code in the child interpreter: confine this process, then run the program.

Runs as `python -I -S -B child.py CONFIG_JSON` in a fresh working directory, standard library only,
with a per-run nonce on standard input. The program passes only if it runs to its end: then, and
only then, this harness writes the nonce to the result pipe and leaves with `os._exit(0)`, before
any `atexit` handler can run. An early `exit(0)`, `os._exit(0)`, `SystemExit` or an exception
hook that exits 0 leaves the pipe empty, so the parent grades it a fail (the nonce never appears
in argv, where `sys.orig_argv` or /proc/self/cmdline would show it).

Each confinement layer is applied when the kernel allows it and named on the first line of stdout
(a JSON list) before any untrusted code runs, so the parent knows what held:

- pids-cgroup, memory-cgroup: join the cgroups the parent made, which cap the processes (fork
  bombs) and the memory of the whole sandbox, not of each process;
- network-namespace: a new, empty network namespace (no interface is up, so nothing is reachable);
- private-disk: in a mount namespace of its own, a tmpfs of `disk_mb` becomes the working
  directory: what all files together may hold (the program was read before, and the tmpfs goes
  with the namespace);
- landlock: writes only below the working directory (no device nodes even there), reads only of
  the interpreter's own files (not the parent's environment in /proc, not the user's files), no
  execve, no TCP, no signals or abstract sockets beyond the sandbox;
- unprivileged-uid: when started as root and the interpreter's files are readable by others, run
  as `nobody` from here on;
- no-capabilities: every capability dropped (bounding, ambient, effective and permitted sets) and
  the securebits locked so that uid 0 gains none back: no mknod, sethostname, chattr +i, raw
  sockets or mounts, even where the process stays uid 0;
- seccomp: socket(AF_UNIX, ...) fails, so no socket file of a host service (a database, a
  container engine) can be reached, through libseccomp (the pyseccomp binding, imported from
  where the parent found it before Landlock closes the file system);
- rlimits: address space, CPU seconds, file size, open files, processes, no core dumps.
"""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS = 0x10000000, 0x40000000, 0x00020000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 1 << 14, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
FILE_ONLY_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14) | (1 << 15)
FS_MAKE_CHAR, FS_MAKE_BLOCK = 1 << 6, 1 << 11  # device nodes: never, not even in the working directory
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
# NOROOT, NO_SETUID_FIXUP and NO_CAP_AMBIENT_RAISE, each with its lock, and KEEP_CAPS_LOCKED
SECUREBITS_LOCKED_DOWN = 0b11101111
CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def join_cgroup(procs_file):
    try:
        with open(procs_file, "w") as handle:
            handle.write(str(os.getpid()))
    except OSError:
        return False
    return True


def private_disk(workdir, size_mb, owner):
    """Mount a tmpfs of `size_mb` over the working directory in a new mount namespace."""
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    options = f"size={size_mb}m,mode=0700" + (f",uid={owner},gid={owner}" if owner is not None else "")
    if libc.mount(b"tmpfs", workdir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()) != 0:
        return False
    os.chdir(workdir)
    return True


def enter_network_namespace():
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    return libc.unshare(flags) == 0


def landlock(workdir, readable):
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)
    if abi < 1:
        return False
    all_fs = FS_RIGHTS_BY_ABI[max(level for level in FS_RIGHTS_BY_ABI if level <= abi)]
    attr = RulesetAttr(all_fs, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                       SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return False
    read_only = FS_READ_FILE | FS_READ_DIR
    own = all_fs & ~(FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK)
    for path, rights in [(workdir, own)] + [(path, read_only) for path in readable]:
        if not os.path.exists(path):
            continue
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        allowed = rights if os.path.isdir(path) else rights & FILE_ONLY_RIGHTS
        rule = PathBeneathAttr(allowed, fd)
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            return False
        os.close(fd)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) == 0


class CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapabilityData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def run_as(uid):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    return os.getuid() == uid


def drop_capabilities():
    """Empty every capability set and lock the securebits, so that uid 0 gains nothing back."""
    if os.geteuid() == 0 and libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN, 0, 0, 0) != 0:
        return False
    capability = 0
    while libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) == 0:  # EINVAL past the last capability
        capability += 1
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = CapabilityHeader(CAPABILITY_VERSION_3, 0), (CapabilityData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0 or libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    with open("/proc/self/status") as status:
        sets = [line.split()[1] for line in status if line.startswith(("CapEff", "CapPrm", "CapBnd", "CapAmb"))]
    return all(int(value, 16) == 0 for value in sets)


def block_unix_sockets(binding_directory):
    """A seccomp filter under which creating a UNIX-domain socket fails with EACCES."""
    if not binding_directory:
        return False
    sys.path.insert(0, binding_directory)
    try:
        import errno
        import socket

        import pyseccomp as seccomp

        rules = seccomp.SyscallFilter(seccomp.ALLOW)
        rules.add_rule(seccomp.ERRNO(errno.EACCES), "socket", seccomp.Arg(0, seccomp.EQ, socket.AF_UNIX))
        rules.load()
    except Exception:  # noqa: BLE001 - the layer is then reported as missing, not fatal
        return False
    finally:
        sys.path.remove(binding_directory)
    return True


def set_limits(limits):
    megabyte = 1 << 20
    for name, value in [("RLIMIT_AS", limits["memory_mb"] * megabyte), ("RLIMIT_CPU", limits["cpu_seconds"]),
                        ("RLIMIT_FSIZE", limits["file_size_mb"] * megabyte), ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0)]:
        resource.setrlimit(getattr(resource, name), (value, value))
    return True


def read_nonce():
    """The run's nonce from standard input; then standard input becomes /dev/null for the program."""
    nonce = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return nonce


def main():
    config = json.loads(sys.argv[1])
    nonce = read_nonce()
    workdir = os.getcwd()
    layers = []
    with open(config["program"], encoding="utf-8") as handle:  # before the private disk hides it
        source = handle.read()
    for layer, procs_file in config["cgroups"].items():
        if join_cgroup(procs_file):
            layers.append(layer)
    if enter_network_namespace():
        layers.append("network-namespace")
    if private_disk(workdir, config["limits"]["disk_mb"], config["run_as"]):
        layers.append("private-disk")
    if config["run_as"] is not None and run_as(config["run_as"]):
        layers.append("unprivileged-uid")
    if drop_capabilities():
        layers.append("no-capabilities")
    if block_unix_sockets(config["seccomp_binding"]):
        layers.append("seccomp")
    if landlock(workdir, config["readable"]):
        layers.append("landlock")
    if set_limits(config["limits"]):
        layers.append("rlimits")
    print(json.dumps(layers), flush=True)
    sys.argv = [config["program"]]
    # Compiled only now, confined: a program that does not compile is the program's fail, not the
    # harness's, and the compiler's own memory and time on untrusted text are within the limits.
    code = compile(source, config["program"], "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(config["result_fd"], nonce)
    os._exit(0)


if __name__ == "__main__":
    main()
