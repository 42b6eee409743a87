"""The sandbox's first code in the child interpreter: confine this process, run the program, call its function.

Runs as `python -I -S -B child.py CONFIG_JSON` in a fresh working directory, standard library only.
It reads the program and the calls to make before it confines itself, applies the layers of
`layers.py` that the kernel allows, and names them in the first frame of its result channel before
any untrusted code runs. Then it runs the program and, when asked, calls the program's function on
each input in turn and sends what each call returned as plain data (`values.py`), a frame per call
as it returns, and a last frame that says it ended. Nothing in this process decides a grade: the
outputs are data that a test checks elsewhere, and the process holds no secret. An exit before the
last frame (whatever its status) is a fail.

The result channel is a pipe of its own (a frame is an 8-byte length, then JSON); standard output
and error are other pipes, which the parent reads with a size limit.
"""

import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves this folder off the path
import layers  # noqa: E402
import values  # noqa: E402

sys.path.pop(0)


def send(fd, frame):
    data = frame.encode()
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def confine(config, workdir):
    """Apply every layer the kernel allows, in an order where each still has what it needs."""
    rules = layers.syscall_filter(config["seccomp_binding"])  # built while libseccomp can still be read
    applied = [layer for layer, procs_file in config["cgroups"].items() if layers.join_cgroup(procs_file)]
    steps = [
        ("network-namespace", layers.enter_network_namespace),
        ("private-disk", lambda: layers.private_disk(workdir, config["limits"]["disk_mb"], config["run_as"])),
        ("unprivileged-uid", lambda: config["run_as"] is not None and layers.run_as(config["run_as"])),
        ("dies-with-grader", lambda: layers.die_with(config["grader_pid"])),
        ("no-capabilities", layers.drop_capabilities),
        ("landlock", lambda: layers.landlock(workdir, config["readable"])),
        ("rlimits", lambda: layers.set_limits(config["limits"])),
        ("seccomp", lambda: rules is not None and layers.load_filter(rules)),
    ]
    applied += [layer for layer, step in steps if step()]
    return applied


def call_once(function, call):
    """One call's outcome as JSON: {"value": ...}, {"raised": name} or {"unencodable": why}."""
    try:
        args, kwargs = values.decode(call)
        result = function(*args, **kwargs)
    except BaseException as error:  # noqa: BLE001 - a call that exits or raises is that call's outcome
        return json.dumps({"raised": type(error).__name__})
    try:
        return json.dumps({"value": values.to_plain(result, 0)}, allow_nan=True)
    except BaseException as error:  # noqa: BLE001 - not plain data, or too large to write
        return json.dumps({"unencodable": f"{type(error).__name__}: {error}"[:200]})


def main():
    config = json.loads(sys.argv[1])
    with open(config["program"], encoding="utf-8") as handle:  # before the private disk hides them
        source = handle.read()
    with open(config["request"], encoding="utf-8") as handle:
        request = json.load(handle)
    result_fd = config["result_fd"]
    send(result_fd, json.dumps({"layers": confine(config, os.getcwd())}))
    sys.argv = [config["program"]]
    # Compiled only now, confined: a program that does not compile is the program's fail, not the
    # harness's, and the compiler's own memory and time on untrusted text are within the limits.
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(source, config["program"], "exec"), namespace)
    if request["entry_point"] is not None:
        function = namespace.get(request["entry_point"])
        if not callable(function):
            sys.exit(f"NameError: the program defines no function {request['entry_point']}")
        for call in request["calls"]:
            send(result_fd, call_once(function, call))
    sys.stdout.flush()
    sys.stderr.flush()
    send(result_fd, json.dumps({"end": len(request["calls"])}))
    os._exit(0)


if __name__ == "__main__":
    main()
