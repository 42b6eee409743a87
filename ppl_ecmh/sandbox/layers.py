"""The confinement layers the sandbox's child applies to itself, each a function that says whether it held.

Standard library only (plus the pyseccomp binding, imported from where the parent found it): the
child loads this file by path before its file system closes. In the order the child applies them:

- pids-cgroup, memory-cgroup: join the cgroups the parent made, which cap the processes and the
  memory of the whole sandbox, not of each process;
- network-namespace: a new, empty network namespace (no interface is up, so nothing is reachable);
- private-disk: in a mount namespace of its own, a tmpfs of `disk_mb` becomes the working
  directory: what all files together may hold (it goes with the namespace);
- unprivileged-uid: when started as root and the interpreter's files are readable by others, run
  as `nobody` from here on;
- dies-with-grader: SIGKILL when the grader that started it exits, however it exits;
- no-capabilities: every capability dropped and the securebits locked, so uid 0 gains none back;
- landlock: writes only below the working directory (no device nodes), reads only of the standard
  library and the system's shared libraries, no execve, no TCP, no signals or abstract sockets
  beyond the sandbox;
- rlimits: address space, CPU seconds, file size, open files, processes, no core dumps;
- seccomp: a default-deny allow-list of the system calls a program that computes needs (below).
"""

import ctypes
import errno
import os
import resource
import signal
import sys

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS = 0x10000000, 0x40000000, 0x00020000
CLONE_THREAD = 0x00010000
# Every namespace flag of clone(2): a thread may not be created with any of them.
CLONE_NAMESPACES = 0x00000080 | 0x02000000 | 0x04000000 | 0x08000000 | CLONE_NEWUSER | 0x20000000 \
    | CLONE_NEWNET | CLONE_NEWNS
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 1 << 14, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_NAME, PR_GET_NAME = 1, 38, 15, 16
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
TCGETS, FIONBIO, FIONCLEX, FIOCLEX = 0x5401, 0x5421, 0x5450, 0x5451

# What a Python program that computes needs, by name; a name this architecture lacks is skipped.
# Everything else fails with EPERM: every socket family and socketpair, io_uring, ptrace, execve,
# fork, unshare, setns, mount, bpf, keyctl, and the x32 and 32-bit ABIs (other architectures are
# not in the filter at all).
ALLOWED_SYSCALLS = (
    # files, below what Landlock lets it open
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "lseek", "close",
    "close_range", "open", "openat", "creat", "stat", "fstat", "lstat", "newfstatat", "statx", "statfs",
    "fstatfs", "access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents64", "getcwd",
    "chdir", "fchdir", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat",
    "renameat2", "chmod", "fchmod", "fchmodat", "utimensat", "ftruncate", "truncate", "fsync",
    "fdatasync", "fadvise64", "fcntl", "flock", "dup", "dup2", "dup3", "pipe", "pipe2", "sendfile",
    "copy_file_range", "umask",
    # memory
    "mmap", "munmap", "mremap", "mprotect", "madvise", "brk", "msync", "mincore",
    # signals, threads, time
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait",
    "sigaltstack", "tgkill", "tkill", "futex", "set_robust_list", "get_robust_list", "set_tid_address",
    "rseq", "sched_yield", "sched_getaffinity", "arch_prctl", "nanosleep", "clock_nanosleep",
    "clock_gettime", "clock_getres", "gettimeofday", "time", "times", "alarm", "setitimer", "getitimer",
    "poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
    "eventfd2", "restart_syscall",
    # identity and limits
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid",
    "getresgid", "getpgrp", "getpgid", "getsid", "getrlimit", "getrusage", "sysinfo", "uname", "getrandom",
    "getcpu", "exit", "exit_group",
)


libc = ctypes.CDLL(None, use_errno=True)


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapabilityData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def join_cgroup(procs_file):
    try:
        with open(procs_file, "w") as handle:
            handle.write(str(os.getpid()))
    except OSError:
        return False
    return True


def enter_network_namespace():
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    return libc.unshare(flags) == 0


def private_disk(workdir, size_mb, owner):
    """Mount a tmpfs of `size_mb` over the working directory in a new mount namespace."""
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    options = f"size={size_mb}m,mode=0700" + (f",uid={owner},gid={owner}" if owner is not None else "")
    if libc.mount(b"tmpfs", workdir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()) != 0:
        return False
    os.chdir(workdir)
    return True


def run_as(uid):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    return os.getuid() == uid


def die_with(grader_pid):
    """SIGKILL this process when its parent exits. Set after the uid changes (which clear it); a
    grader already gone by then is noticed by the parent pid."""
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != grader_pid:
        os._exit(1)
    return True


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
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        allowed = rights if os.path.isdir(path) else rights & FILE_ONLY_RIGHTS
        rule = PathBeneathAttr(allowed, fd)
        added = libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        os.close(fd)
        if added != 0:
            return False
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) == 0


def set_limits(limits):
    megabyte = 1 << 20
    for name, value in [("RLIMIT_AS", limits["memory_mb"] * megabyte), ("RLIMIT_CPU", limits["cpu_seconds"]),
                        ("RLIMIT_FSIZE", limits["file_size_mb"] * megabyte), ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0)]:
        resource.setrlimit(getattr(resource, name), (value, value))
    return True


def syscall_filter(binding_directory):
    """The allow-list as an unloaded libseccomp filter (built while its library can still be
    found and read), or None where pyseccomp or libseccomp is missing."""
    if not binding_directory:
        return None
    sys.path.insert(0, binding_directory)
    try:
        import pyseccomp as seccomp

        rules = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
        for name in ALLOWED_SYSCALLS:
            try:
                rules.add_rule(seccomp.ALLOW, name)
            except (OSError, ValueError):  # not a system call of this architecture
                pass
        # threads only: a new process would outlive the parent-death signal, which is per process
        rules.add_rule(seccomp.ALLOW, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD | CLONE_NAMESPACES,
                                                           CLONE_THREAD))
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # glibc then falls back to clone
        rules.add_rule(seccomp.ALLOW, "kill", seccomp.Arg(0, seccomp.EQ, os.getpid()))
        rules.add_rule(seccomp.ALLOW, "prlimit64", seccomp.Arg(0, seccomp.EQ, 0))
        for option in (PR_SET_NAME, PR_GET_NAME):
            rules.add_rule(seccomp.ALLOW, "prctl", seccomp.Arg(0, seccomp.EQ, option))
        for request in (TCGETS, FIONBIO, FIONCLEX, FIOCLEX):
            rules.add_rule(seccomp.ALLOW, "ioctl", seccomp.Arg(1, seccomp.EQ, request))
    except Exception:  # noqa: BLE001 - the layer is then reported as missing, not fatal
        return None
    finally:
        sys.path.remove(binding_directory)
    return rules


def load_filter(rules):
    try:
        rules.load()
    except OSError:
        return False
    return True
