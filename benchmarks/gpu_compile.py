"""What XLA:GPU makes of the engine's loop, on a machine without a GPU.

A deviceless compile (JAX's compile-only devices, from a GPU target description: an H100 SXM's by
default, the same sm_90 as the H200) of the accelerator check's paper shapes, with abstract weights
and caches, so nothing is allocated. For each compiled loop it reports, per iteration:

- cache-sized copies: `copy` instructions in the loop's body (conditional branches included) whose
  result is at least one layer's keys or values. Raw decode and the engine update their caches in
  place; a copy means XLA could not, and costs a pass over that much memory at every iteration;
- kernels: fusions and library calls in the body (a nested loop's body counted once);
- host-waiting loops: nested loops whose trip count XLA does not know. XLA:GPU runs such a loop
  as a `WhileThunk` that copies its condition to the host and waits for the device at every trip
  (while_thunk.cc): a transformer's attention loop up to the furthest live position makes one per
  layer, each waiting chunks + 1 times per decode step;
- the temporaries buffer assignment allocates, in GB.

Loops: the engine's default loop, the same with static attention (over the whole cache: loops of
known trip count, `Engine(static_attention=True)`, the default on an accelerator), and raw decode
(the reference; also over spans, the lockstep samplers' default on a GPU: one loop per span, the
figures the most any of them has). XLA:CPU elides
copies that XLA:GPU keeps, so only a GPU compile shows them: the engine that ran on an H200
copied both whole caches at every iteration, and an iteration cost 3.7 raw decode steps
(docs/gpu-recipe.md).

Needs the CUDA plugin and nothing else of CUDA: no GPU, no driver (`pip install -e .[gpu-compile]`,
best in an environment of its own: with the plugin installed, JAX looks for a GPU whenever it
starts; `make setup` puts it in .venv/gpu-compile instead). It runs on JAX's CPU platform, in
about 15 s per loop at the 1.5B shape, and logs that it found no CUDA driver: none is needed.

    PYTHONPATH=.venv/gpu-compile python -m benchmarks.gpu_compile      # both paper shapes
    PYTHONPATH=.venv/gpu-compile python -m benchmarks.gpu_compile --shapes tiny --json compile.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

# With the CUDA plugin installed, JAX must not look for a GPU: a failed look drops the plugin, and
# with it the compile-only devices. This only works before anything in the process imports jax.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from benchmarks.accelerator import (PAPER, SHAPES, TINY, admitted_slots, engine_keys, engine_schedule,  # noqa: E402
                                    planned_settings, random_transformer)
from ppl_ecmh.engine import memory  # noqa: E402
from ppl_ecmh.engine import slots as device  # noqa: E402
from ppl_ecmh.engine.scheduler import ADMISSION_ROWS, _admit, _advance  # noqa: E402  (the engine's programs)
from ppl_ecmh.lm import generation  # noqa: E402

# An H100 SXM (sm_90, 132 multiprocessors, 50 MB of L2, 3.35 TB/s): what XLA:GPU needs to compile
# for it. Copy insertion and buffer assignment, which decide the copies, do not depend on the numbers.
H100_SXM = """
gpu_device_info {
  cuda_compute_capability { major: 9 minor: 0 }
  threads_per_block_limit: 1024  threads_per_warp: 32  threads_per_core_limit: 2048
  shared_memory_per_block: 49152  shared_memory_per_block_optin: 232448  shared_memory_per_core: 233472
  core_count: 132  fpus_per_core: 128  clock_rate_ghz: 1.98
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
  memory_bandwidth: 3352320000000  l2_cache_size: 52428800  device_memory_size: 84978434048
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

KERNELS = ("fusion", "custom-call", "copy", "scatter", "gather", "dynamic-update-slice", "sort", "reduce", "dot")


def compile_only_device(target_config: str = H100_SXM):
    """A GPU that exists only to be compiled for."""
    topology = topologies.get_topology_desc(platform="cuda", topology_name="", target_config=target_config,
                                            topology="1x1x1")
    return topology.devices[0]


def placed(tree, gpu):
    """Abstract values of `tree`'s shapes, on `gpu`."""
    sharding = SingleDeviceSharding(gpu)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def abstract_model(name: str, gpu):
    return placed(jax.eval_shape(lambda: random_transformer(SHAPES[name])), gpu)


def engine_loop(lm, settings: dict, gpu, span: int | None = None):
    """The engine's compiled loop (`scheduler._advance`) for `chains` slots holding ecmh's
    block-wise chains, compiled for `gpu`; with a `span`, its static attention over that many
    positions."""
    schedule, keys = engine_schedule(settings), engine_keys(settings)
    slots = placed(jax.eval_shape(lambda lm: admitted_slots(lm, settings, schedule, keys), lm), gpu)
    count = placed(jax.ShapeDtypeStruct((), jnp.int32), gpu)
    return _advance.trace(slots, lm, count, count, schedule, span).lower(
        lowering_platforms=("cuda",)).compile()


def admission(lm, settings: dict, gpu):
    """The engine's admission (`scheduler._admit`) of its largest group of prompts (ADMISSION_ROWS,
    or `chains` if fewer) into `chains` empty slots, compiled for `gpu`, and the inputs it was
    compiled for."""
    width, prompt, schedule = settings["chains"], settings["prompt"], engine_schedule(settings)
    group = min(width, ADMISSION_ROWS)
    slots = placed(jax.eval_shape(lambda lm: device.empty_slots(lm, width, prompt, schedule), lm), gpu)
    rows = placed(jax.ShapeDtypeStruct((group,), jnp.int32), gpu)
    inputs = (slots, lm, rows, placed(jax.ShapeDtypeStruct((group, prompt), jnp.int32), gpu), rows,
              placed(jax.ShapeDtypeStruct((group, 2), jnp.uint32), gpu), rows)
    return _admit.trace(*inputs, None, rows, schedule).lower(lowering_platforms=("cuda",)).compile(), inputs


def memory_figures(config, lm, settings: dict, gpu, engine) -> dict:
    """The engine's memory plan (`ppl_ecmh.engine.memory`) against XLA:GPU's buffer assignment
    for its two programs, admission and the compiled loop `engine` (whose inputs are the slots and
    the model), in GB."""
    admitted, inputs = admission(lm, settings, gpu)
    slots = inputs[0]
    admit_gb = memory.compiled_peak(admitted, inputs) / 1e9
    loop_gb = memory.compiled_peak(engine, (slots, lm)) / 1e9
    planned = memory.plan(config, "bfloat16", settings["prompt"], settings["max_new_tokens"], settings["chains"]).peak
    return dict(xla_admission_gb=admit_gb, xla_loop_gb=loop_gb, plan_gb=planned / 1e9,
                plan_over_xla=planned / 1e9 / max(admit_gb, loop_gb))


def raw_decode(lm, settings: dict, gpu, static_attention: bool = False):
    """`generation.extend` on `chains` rows, the cache sized for the prompt and T_max, compiled for
    `gpu`; with `static_attention`, its loops over spans (the default on a GPU; this process's
    backend is the CPU, so it is said here)."""
    width = settings["chains"]
    seqs = placed(jax.eval_shape(lambda: generation.new_sequences([[1] * settings["prompt"]] * width,
                                                                  settings["max_new_tokens"])), gpu)
    cache = placed(jax.eval_shape(generation.prefill, lm, seqs), gpu)
    rows = placed(jax.ShapeDtypeStruct((width,), jnp.int32), gpu)
    key = placed(jax.eval_shape(lambda: jax.random.key(0)), gpu)
    decode = jax.jit(lambda lm, key, seqs, cache, keep, limit: generation.extend(lm, key, seqs, cache, keep, limit,
                                                                                 1.0, static_attention))
    return decode.trace(lm, key, seqs, cache, rows, rows).lower(lowering_platforms=("cuda",)).compile()


def computations(hlo: str) -> dict[str, list[str]]:
    """The instructions of each computation of an HLO module's text, by name."""
    found, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if header:
            current = found[header.group(1)] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line.strip())
    return found


def _elements(instruction: str) -> int:
    shape = re.search(r"= \w+\[([\d,]*)\]", instruction)
    return math.prod(int(size) for size in shape.group(1).split(",") if size) if shape else 0


def _callees(instruction: str, kind: str) -> list[str]:
    if kind == "while":
        return [re.search(r"body=%([^,\s]+)", instruction).group(1)]
    named = re.findall(r"(?:true_computation|false_computation)=%([^,\s]+)", instruction)
    listed = re.search(r"branch_computations=\{([^}]*)\}", instruction)
    return named or re.findall(r"%([^,\s]+)", listed.group(1) if listed else "")


def loop_figures(compiled, cache_elements: int) -> dict:
    """Per iteration of the module's outermost loops (a decode over spans has one per span; each
    figure is the most any of them has): its cache-sized copies (in its body and its
    conditionals' branches) and kernels, with the copies its nested loops make per inner iteration,
    and the module's temporaries."""
    hlo = compiled.as_text()
    bodies = computations(hlo)
    entry = re.search(r"^ENTRY %(\S+)", hlo, re.M).group(1)
    outer = [_callees(line, "while")[0] for line in bodies[entry] if " while(" in line]
    each = [outer_loop_figures(bodies, body, cache_elements) for body in outer]
    return {name: max(figures[name] for figures in each) for name in each[0]} | dict(
        outer_loops=len(outer), temp_gb=compiled.memory_analysis().temp_size_in_bytes / 1e9)


def outer_loop_figures(bodies: dict[str, list[str]], outer: str, cache_elements: int) -> dict:
    """`loop_figures` of one outermost loop, by the name of its body."""
    figures = dict(cache_copies=0, kernels=0, nested_loops=0, host_waiting_loops=0, cache_copies_in_nested_loops=0)

    def visit(name: str, in_nested_loop: bool) -> None:
        for instruction in bodies[name]:
            kind = re.match(r"(?:ROOT )?%\S+ = .*? ([\w-]+)\(", instruction)
            kind = kind and kind.group(1)
            if kind == "copy" and _elements(instruction) >= cache_elements:
                figures["cache_copies_in_nested_loops" if in_nested_loop else "cache_copies"] += 1
            if kind in KERNELS and not in_nested_loop:
                figures["kernels"] += 1
            if kind == "while":
                figures["nested_loops"] += not in_nested_loop
                figures["host_waiting_loops"] += "known_trip_count" not in instruction
                visit(_callees(instruction, kind)[0], True)
            elif kind == "conditional":
                for branch in _callees(instruction, kind):
                    visit(branch, in_nested_loop)

    visit(outer, False)
    return figures


def settings_for(name: str) -> dict:
    """The accelerator check's sizes for a shape: the toy ones for the toy shape."""
    return TINY if name == "tiny" else PAPER


def check_shape(name: str, gpu) -> dict:
    """Every loop's figures at one shape."""
    config, lm = SHAPES[name], abstract_model(name, gpu)
    settings = planned_settings(config, settings_for(name))[0]  # the widths an 80 GB H100 holds
    cache_size = settings["prompt"] + settings["max_new_tokens"]
    layer_elements = settings["chains"] * config.num_kv_heads * cache_size * config.head_dim
    figures = dict(shape=name, chains=settings["chains"], layer_cache_elements=layer_elements, loops={})
    loops = dict(engine=lambda: engine_loop(lm, settings, gpu),
                 engine_static_attention=lambda: engine_loop(lm, settings, gpu, span=cache_size),
                 raw_decode=lambda: raw_decode(lm, settings, gpu),
                 raw_decode_static_attention=lambda: raw_decode(lm, settings, gpu, static_attention=True))
    for loop, build in loops.items():
        started = time.perf_counter()
        compiled = build()
        figures["loops"][loop] = loop_figures(compiled, layer_elements) | dict(
            compile_s=time.perf_counter() - started)
        print(f"{name} {loop}: {figures['loops'][loop]}", flush=True)
        if loop == "engine_static_attention":  # the loop an accelerator runs
            figures["memory"] = memory_figures(config, lm, settings, gpu, compiled)
            print(f"{name} memory: {figures['memory']}", flush=True)
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["qwen2.5-7b", "qwen2.5-math-1.5b", "qwen3-8b-base", "phi-4-mini"],
                        choices=list(SHAPES))
    parser.add_argument("--target-config", help="a GpuTargetConfigProto in text format (default: an H100 SXM's)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    gpu = compile_only_device(open(args.target_config).read() if args.target_config else H100_SXM)
    results = dict(jax=jax.__version__, target=gpu.device_kind, shapes=[
        check_shape(name, gpu) for name in args.shapes])
    print(f"\njax {jax.__version__}, compiled for {gpu.device_kind} (no device used)")
    print(f"{'shape':>18} {'loop':>27} {'loops':>5} {'cache copies/it':>15} {'kernels/it':>10} "
          f"{'host-waiting loops':>18} {'temp GB':>8} {'compile s':>9}")
    for shape in results["shapes"]:
        for loop, figures in shape["loops"].items():
            print(f"{shape['shape']:>18} {loop:>27} {figures['outer_loops']:>5} {figures['cache_copies']:>15} "
                  f"{figures['kernels']:>10} {figures['host_waiting_loops']:>18} {figures['temp_gb']:>8.2f} "
                  f"{figures['compile_s']:>9.1f}")
    print(f"\n{'shape':>18} {'slots':>5} {'XLA admission GB':>16} {'XLA loop GB':>11} {'plan GB':>8} {'plan/XLA':>8}")
    for shape in results["shapes"]:
        figures = shape["memory"]
        print(f"{shape['shape']:>18} {shape['chains']:>5} {figures['xla_admission_gb']:>16.2f} "
              f"{figures['xla_loop_gb']:>11.2f} {figures['plan_gb']:>8.2f} {figures['plan_over_xla']:>8.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    sys.exit(0 if all(figures["cache_copies"] == 0 for shape in main()["shapes"]
                      for loop, figures in shape["loops"].items() if loop.startswith("engine")) else 1)
