"""The accelerator check: paper-scale shapes on one GPU, our JAX path beside the reference's.

For each model shape (Qwen2.5-7B's and Qwen2.5-Math-1.5B's; random bfloat16 weights made on the
device, since no checkpoint can travel; EOS disabled, so lengths are controlled):

- decode tokens/s of the JAX runtime at widths 1, 16, 64 and 256, the cache sized for a 128-token
  prompt plus T_max 3072;
- the engine running ecmh's block-wise schedule (B 192, N_MCMC 10) on 64 chains for a fixed number
  of decode iterations: occupancy, useful tokens/s, and its ratio to raw decode at width 64; with
  static attention where the engine defaults to it (any backend but the CPU), over the smallest
  span that holds every position those iterations reach;
- the reference's code path at the same shape and widths: transformers + PyTorch `generate` (what
  Karan and Du's code calls for every proposal), tokens/s and our ratio to it;
- peak device memory of each (None on a CPU);
- where the time of a raw decode step and of an engine iteration goes at width 64: a profile of a
  few of each, summed by XLA op (device busy time against wall time, and the ops that take most);
- decode tokens/s at width 64 after the prompt and late in the same cache (from position 1536
  instead of 128), with each attention: dynamic, where each layer's attention loops over 2 and
  then 13 key/value chunks and XLA:GPU reads a loop's condition on the host at every trip, so
  this says what those round trips cost; and static (`ppl_ecmh.lm.spans`: loops of a trip count
  known when compiled, over 256 and 2048 positions), which has no such round trip. The decode
  figures above take the backend's default: static on a GPU, dynamic on a CPU.

What XLA:GPU compiles the engine's loop into needs no GPU at all: see benchmarks/gpu_compile.py.

It writes a JSON of every figure as it is measured (so a run cut off by its lease still leaves
what it measured) and prints a table. A measurement that fails records its error and the check goes
on; so does one not started before `--deadline-s`, recorded as skipped; the exit status is 1 if any
failed. JAX does not preallocate the device's memory here, so PyTorch's reference has room beside it.
The first shape named runs first.
`--tiny` runs the same code at a toy shape in seconds on a CPU (tests/test_accelerator_check.py
does, so the script cannot rot).

    PYTHONPATH=. python3 -m benchmarks.accelerator --json accelerator.json      # on the GPU machine
    python -m benchmarks.accelerator --tiny                                      # anywhere
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import math
import os
import sys
import tempfile
import time
import traceback

# Before JAX starts its backend: grow into the device's memory as needed (PyTorch's reference
# shares it), up to 90% of it (the 7B shape's cache at width 256 is 47 GB, held twice in a decode).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.decode import without_eos  # noqa: E402
from benchmarks.engine import decode_rate  # noqa: E402
from ppl_ecmh.engine import Schedule, chain_key  # noqa: E402
from ppl_ecmh.engine import slots as device  # noqa: E402
from ppl_ecmh.samplers.cuts import EntropyJump  # noqa: E402
from ppl_ecmh.engine.scheduler import ADMISSION_ROWS, _admit, _advance  # noqa: E402  (the engine's compiled loop)
from ppl_ecmh.engine import memory  # noqa: E402
from ppl_ecmh.lm.catalog import PAPER_MODELS  # noqa: E402
from ppl_ecmh.lm.config import ModelConfig  # noqa: E402
from ppl_ecmh.lm.spans import attention_span, static_attention_by_default  # noqa: E402
from ppl_ecmh.lm.transformer import Transformer, rope_params  # noqa: E402

SHAPES = {  # the papers' shapes (`ppl_ecmh.lm.catalog`), EOS disabled (-1), and a toy one for a CPU
    name: dataclasses.replace(PAPER_MODELS[hub_id].config, eos_token_ids=(-1,))
    for name, hub_id in (("qwen2.5-7b", "Qwen/Qwen2.5-7B"), ("qwen2.5-math-1.5b", "Qwen/Qwen2.5-Math-1.5B"),
                         ("qwen3-8b-base", "Qwen/Qwen3-8B-Base"), ("phi-4-mini", "microsoft/Phi-4-mini-instruct"))
} | {"tiny": ModelConfig(architecture="qwen2", vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=16, attention_bias=True, max_position_embeddings=256,
                         eos_token_ids=(-1,))}
PAPER = dict(prompt=128, max_new_tokens=3072, block_size=192, num_mcmc_steps=10, chains=64, widths=(1, 16, 64, 256),
             new_tokens=64, engine_iterations=512, profile_iterations=32, late_prompt=1536)
TINY = dict(prompt=8, max_new_tokens=32, block_size=8, num_mcmc_steps=2, chains=4, widths=(1, 4), new_tokens=4,
            engine_iterations=24, profile_iterations=4, late_prompt=24)


def random_transformer(config: ModelConfig, dtype=jnp.bfloat16, seed: int = 0) -> Transformer:
    """A decoder of `config`'s shape with random weights, made on the default device."""

    def matrix(key, rows, columns):
        return (jax.random.normal(key, (rows, columns), jnp.float32) * 0.02).astype(dtype)

    def layer(key):
        keys = jax.random.split(key, 10)
        q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        params = dict(wq=matrix(keys[0], q, config.hidden_size), wk=matrix(keys[1], kv, config.hidden_size),
                      wv=matrix(keys[2], kv, config.hidden_size), wo=matrix(keys[3], config.hidden_size, q),
                      w_gate=matrix(keys[4], config.intermediate_size, config.hidden_size),
                      w_up=matrix(keys[5], config.intermediate_size, config.hidden_size),
                      w_down=matrix(keys[6], config.hidden_size, config.intermediate_size),
                      attn_norm=jnp.ones(config.hidden_size, dtype), mlp_norm=jnp.ones(config.hidden_size, dtype))
        if config.attention_bias:
            params |= dict(bq=jnp.zeros(q, dtype), bk=jnp.zeros(kv, dtype), bv=jnp.zeros(kv, dtype))
        if config.qk_norm:
            params |= dict(q_norm=jnp.ones(config.head_dim, dtype), k_norm=jnp.ones(config.head_dim, dtype))
        return params

    make_layer = jax.jit(layer)
    keys = jax.random.split(jax.random.PRNGKey(seed), config.num_layers + 2)
    params = dict(embed=jax.jit(matrix, static_argnums=(1, 2))(keys[0], config.vocab_size, config.hidden_size),
                  layers=[make_layer(key) for key in keys[2:]], final_norm=jnp.ones(config.hidden_size, dtype),
                  **rope_params(config))
    if not config.tie_word_embeddings:
        params["lm_head"] = jax.jit(matrix, static_argnums=(1, 2))(keys[1], config.vocab_size, config.hidden_size)
    return Transformer(params, config)


def peak_memory_gb() -> float | None:
    """The default device's peak memory in use, where the backend reports it (not on a CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None


def failure(error: Exception) -> str:
    """Print the traceback of `error` and return it in one line, for the figures' file."""
    traceback.print_exc()
    return f"{type(error).__name__}: {error}"


def decode_figures(lm, width: int, settings: dict) -> dict:
    """Raw decode at `width`; at the engine's width, also a profile of one more run (or why not)."""
    def rate(trace_dir=None):
        return decode_rate(lm, width, settings["prompt"], settings["max_new_tokens"], settings["new_tokens"],
                           trace_dir=trace_dir)

    if width != settings["chains"]:
        return dict(tokens_per_s=rate(), peak_memory_gb=peak_memory_gb())
    try:
        with tempfile.TemporaryDirectory() as trace_dir:
            tokens_per_s = rate(trace_dir)
            profile = kernel_summary(trace_dir)
    except Exception as error:  # a profiler the machine refuses costs the profile, not the rate
        tokens_per_s, profile = rate(), dict(error=failure(error))
    steps = settings["new_tokens"]  # wall: the untraced run's
    return dict(tokens_per_s=tokens_per_s, peak_memory_gb=peak_memory_gb(),
                profile=profile | dict(steps=steps, wall_s=width * steps / tokens_per_s))


def late_decode_figures(lm, settings: dict, decode: dict | None = None) -> dict:
    """Raw decode at the engine's width after the prompt and with `late_prompt` positions already
    cached, in a cache of the same size as the other decode figures', with each attention: dynamic
    (each layer's loop up to the furthest live position, a trip count XLA:GPU reads on the host at
    every trip) and static (`generation.extend`'s loops over spans, known trip counts; the default
    on an accelerator), with the span that holds the positions decoded. `decode`: the decode
    figures at that width after the prompt, whose rate serves for the backend's default attention
    there (a lease's minutes go further)."""
    width, total, new_tokens = settings["chains"], settings["prompt"] + settings["max_new_tokens"], settings["new_tokens"]

    def rate(prompt, static):
        measured = decode and prompt == settings["prompt"] and static == static_attention_by_default()
        return dict(prompt=prompt, span=attention_span(total, prompt + new_tokens) if static else None,
                    tokens_per_s=decode["tokens_per_s"] if measured else decode_rate(
                        lm, width, prompt, total - prompt, new_tokens, static_attention=static))

    starts = (settings["prompt"], settings["late_prompt"])
    figures = {attention: [rate(prompt, attention == "static") for prompt in starts] for attention in ("dynamic", "static")}
    return dict(width=width, prompt=settings["late_prompt"], peak_memory_gb=peak_memory_gb(), **figures)


def engine_span(settings: dict) -> int | None:
    """The span of static attention for the check's engine loop, as the engine would default on
    this backend (none on a CPU): one that holds every position its iterations reach."""
    if not static_attention_by_default():
        return None
    reach = settings["prompt"] + 2 + settings["engine_iterations"] + settings["profile_iterations"]
    return attention_span(settings["prompt"] + settings["max_new_tokens"], reach)


def engine_schedule(settings: dict) -> Schedule:
    """ecmh's block-wise schedule at the check's sizes."""
    return Schedule.blockwise(settings["max_new_tokens"], settings["block_size"], settings["num_mcmc_steps"],
                              cut=EntropyJump(power=4.0), alpha=4.0, tau=0.25)


def engine_keys(settings: dict) -> np.ndarray:
    """The chain keys of `chains` ecmh chains (host arrays, so they can enter a traced program)."""
    return np.stack([chain_key(0, "ecmh", chain, 0) for chain in range(settings["chains"])])


def admitted_slots(lm, settings: dict, schedule: Schedule, keys: np.ndarray | None = None):
    """`chains` chains on random prompts, admitted into as many slots (with `keys`, those chain
    keys), ADMISSION_ROWS at a time as the engine admits them."""
    width, prompt = settings["chains"], settings["prompt"]
    slots = device.empty_slots(lm, width, prompt, schedule)
    keys = jnp.asarray(engine_keys(settings) if keys is None else keys)
    prompts = jnp.asarray(np.random.default_rng(0).integers(0, lm.vocab_size, size=(width, prompt)), jnp.int32)
    for first in range(0, width, ADMISSION_ROWS):
        rows = jnp.arange(first, min(first + ADMISSION_ROWS, width))
        slots = _admit(slots, lm, rows, prompts[rows], jnp.full(len(rows), prompt, jnp.int32), keys[rows], rows, None,
                       jnp.full(len(rows), schedule.num_draws, jnp.int32), schedule)
    return slots


def timed_engine(lm, settings: dict, schedule: Schedule, iterations: int, span: int | None):
    """Fresh admitted slots advanced by the engine's loop (attending over `span`) for two
    iterations (compiling it), then for `iterations` more, timed: (slots, seconds, the counters
    before and after the timed call)."""
    slots = jax.block_until_ready(_advance(admitted_slots(lm, settings, schedule), lm, 2, 1, schedule, span))
    before = jax.device_get(slots.counters)  # host copies: the slots are donated below
    started = time.perf_counter()
    slots = jax.block_until_ready(_advance(slots, lm, iterations, 1, schedule, span))
    return slots, time.perf_counter() - started, before, jax.device_get(slots.counters)


def engine_figures(lm, settings: dict, decode: dict) -> dict:
    """ecmh's block-wise schedule on `chains` chains in as many slots for `engine_iterations`
    decode iterations (after one compiling call): occupancy, useful tokens/s and their ratio to raw
    decode at the same width (measured here unless `decode` has it); then `profile_iterations`
    more, profiled."""
    width, schedule = settings["chains"], engine_schedule(settings)
    span = engine_span(settings)
    slots, seconds, before, after = timed_engine(lm, settings, schedule, settings["engine_iterations"], span)
    peak = peak_memory_gb()
    iterations, decoded = int(after.iterations - before.iterations), int(after.decoded - before.decoded)
    steps = settings["profile_iterations"]
    try:
        with tempfile.TemporaryDirectory() as trace_dir:
            with jax.profiler.trace(trace_dir):
                jax.block_until_ready(_advance(slots, lm, steps, 1, schedule, span))
            profile = kernel_summary(trace_dir)
    except Exception as error:  # a profiler the machine refuses costs the profile, not the figures
        profile = dict(error=failure(error))
    del slots
    profile |= dict(steps=steps, wall_s=seconds / max(1, iterations) * steps)  # wall: the untraced run's
    raw = (decode.get(width) or {}).get("tokens_per_s") or decode_figures(lm, width, settings)["tokens_per_s"]
    return dict(width=width, span=span, iterations=iterations, decoded=decoded, seconds=seconds,
                saved=int(after.saved - before.saved), restored=int(after.restored - before.restored),
                occupancy=decoded / max(1, width * iterations), useful_tokens_per_s=decoded / seconds,
                raw_decode_tokens_per_s=raw, ratio_to_raw=decoded / seconds / raw, peak_memory_gb=peak,
                profile=profile)


def kernel_summary(trace_dir: str, top: int = 20) -> dict:
    """Where a profiled run's time went, from its trace: the device's busy seconds (on a GPU the
    kernels and copies of its stream lines), how many op executions that took, and the `top` XLA
    ops (an event's `hlo_op`, else its name) by time. On a CPU the host threads' XLA op events
    stand in, loops nested around their bodies and threads summed: there it only ranks ops."""
    (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    profile = jax.profiler.ProfileData.from_file(path)
    planes = list(profile.planes)  # an iterator: read once
    devices = [line for plane in planes if plane.name.startswith("/device:") for line in plane.lines]
    lines = [line for line in devices if line.name.startswith("Stream")] or devices
    if not lines:
        lines = [line for plane in planes if plane.name == "/host:CPU" for line in plane.lines]
    nanoseconds, runs = collections.Counter(), collections.Counter()
    for line in lines:
        for event in line.events:
            op = dict(event.stats).get("hlo_op")
            if op is None and not devices:  # host threads: XLA's op events only
                continue
            nanoseconds[op or event.name] += event.duration_ns
            runs[op or event.name] += 1
    return dict(busy_s=sum(nanoseconds.values()) / 1e9, op_runs=sum(runs.values()),
                top=[dict(op=op, ms=ns / 1e6, runs=runs[op]) for op, ns in nanoseconds.most_common(top)])


REFERENCE_CLASSES = {"qwen2": "Qwen2", "qwen3": "Qwen3", "phi3": "Phi3", "llama": "Llama", "mistral": "Mistral"}


def reference_model(config: ModelConfig, device_name: str):
    """transformers' model of `config`'s architecture and shape with random bfloat16 weights on
    `device_name`, or None without PyTorch and transformers."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    family = REFERENCE_CLASSES[config.architecture]
    hf_config = getattr(transformers, f"{family}Config")(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, rope_theta=config.rope_theta,
        partial_rotary_factor=config.partial_rotary_factor,
        max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=0)
    with torch.device(device_name):
        return getattr(transformers, f"{family}ForCausalLM")(hf_config).to(torch.bfloat16).eval()


def reference_rate(model, width: int, settings: dict) -> dict:
    """Tokens/s of the reference's `generate` (sampling, exactly `new_tokens` new tokens) at `width`
    rows, and its peak device memory (weights included; None on a CPU)."""
    import torch

    on_gpu = model.device.type == "cuda"
    prompts = torch.randint(0, model.config.vocab_size, (width, settings["prompt"]), device=model.device)
    options = dict(do_sample=True, top_k=0, pad_token_id=0)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model.generate(prompts, max_new_tokens=2, min_new_tokens=2, **options)  # warm up
        if on_gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(prompts, max_new_tokens=settings["new_tokens"], min_new_tokens=settings["new_tokens"], **options)
        if on_gpu:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return dict(tokens_per_s=width * settings["new_tokens"] / seconds,
                peak_memory_gb=torch.cuda.max_memory_allocated() / 1e9 if on_gpu else None)


def release_reference_memory() -> None:
    """Hand PyTorch's cached device memory back, so that JAX can grow into it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Check:
    """The figures of one run, written to `path` before every measurement, so that a run cut off
    keeps all it finished. A measurement that fails records its error and returns None, and so does
    one not started by the deadline (seconds after the check began), recorded as skipped."""

    def __init__(self, results: dict, path: str | None, deadline_s: float | None):
        self.results, self.path = results | dict(errors={}, skipped=[]), path
        self.started = time.perf_counter()
        self.deadline = None if deadline_s is None else self.started + deadline_s

    def measure(self, label: str, fn, *args):
        self.save()
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.results["skipped"].append(label)
            print(f"[{self.elapsed():6.0f} s] {label}: skipped, past the deadline", flush=True)
            return None
        try:
            value = fn(*args)
        except Exception as error:  # a lease is minutes long: record it and measure the rest
            self.results["errors"][label] = failure(error)
            print(f"[{self.elapsed():6.0f} s] {label}: failed", flush=True)
            return None
        print(f"[{self.elapsed():6.0f} s] {label}: done", flush=True)
        return value

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def save(self) -> None:
        if self.path:
            with open(f"{self.path}.partial", "w") as handle:
                json.dump(self.results | dict(seconds=self.elapsed()), handle, indent=2, default=str)
            os.replace(f"{self.path}.partial", self.path)


H100_BYTES = 80 * 10**9


def planned_settings(config: ModelConfig, settings: dict) -> tuple[dict, dict]:
    """`settings` with its widths and engine chains capped by the engine's memory plan for this
    device (an 80 GB H100 where the device reports none: a CPU), and the plan's figures."""
    device_bytes = memory.device_memory(jax.devices()[0]) or H100_BYTES
    widest = memory.widest_width(config, "bfloat16", settings["prompt"], settings["max_new_tokens"], device_bytes)
    chains = min(settings["chains"], widest)
    widths = tuple(sorted({width for width in settings["widths"] if width <= widest} | {chains}))
    peak = memory.plan(config, "bfloat16", settings["prompt"], settings["max_new_tokens"], chains).peak
    return dict(settings, chains=chains, widths=widths), dict(device_gb=device_bytes / 1e9, widest=widest,
                                                              engine_peak_gb=peak / 1e9)


def check_shape(name: str, settings: dict, reference_device: str, check: Check) -> None:
    """Every figure of one shape into the check's results, at the widths its memory plan allows.
    The reference runs first, so that PyTorch's memory is handed back before JAX's grows."""
    config = SHAPES[name]
    settings, plan = planned_settings(config, settings)
    figures = dict(shape=name, parameters=None, decode={}, reference={}, engine=None, memory_plan=plan,
                   static_attention=static_attention_by_default())  # the decode figures' and the engine's
    check.results["shapes"].append(figures)
    model = check.measure(f"{name}: reference model", reference_model, config, reference_device)
    for width in settings["widths"]:
        figures["reference"][width] = model and check.measure(f"{name}: reference at width {width}",
                                                              reference_rate, model, width, settings)
    del model
    release_reference_memory()
    started = time.perf_counter()
    lm = check.measure(f"{name}: random weights", random_transformer, config)
    if lm is None:
        return
    lm = without_eos(lm)
    figures |= dict(parameters=sum(x.size for x in jax.tree.leaves(lm.params)),
                    init_seconds=time.perf_counter() - started)
    for width in settings["widths"]:
        figures["decode"][width] = check.measure(f"{name}: decode at width {width}", decode_figures, lm, width,
                                                 settings)
    figures["engine"] = check.measure(f"{name}: engine", engine_figures, lm, settings, figures["decode"])
    figures["decode_late"] = check.measure(f"{name}: decode at width {settings['chains']} from position "
                                           f"{settings['late_prompt']}", late_decode_figures, lm, settings,
                                           figures["decode"].get(settings["chains"]))


def print_table(figures: dict) -> None:
    def rate(entry):
        return entry["tokens_per_s"] if entry else math.nan

    def gigabytes(entry):
        return "n/a" if not entry or entry["peak_memory_gb"] is None else f"{entry['peak_memory_gb']:.1f}"

    print(f"\n{figures['shape']}: {(figures['parameters'] or math.nan) / 1e9:.2f} B parameters, "
          + ("static" if figures.get("static_attention") else "dynamic") + " attention unless said")
    print(f"{'width':>5} {'ours tok/s':>10} {'reference tok/s':>15} {'ours/ref':>8} {'peak GB ours':>12} "
          f"{'peak GB ref':>11}")
    for width, reference in figures["reference"].items():
        ours = figures["decode"].get(width)
        print(f"{width:>5} {rate(ours):10.1f} {rate(reference):15.1f} {rate(ours) / rate(reference):8.2f} "
              f"{gigabytes(ours):>12} {gigabytes(reference):>11}")
    engine = figures["engine"]
    if engine:
        print(f"engine, ecmh block-wise, {engine['width']} chains, {engine['iterations']} iterations: occupancy "
              f"{engine['occupancy']:.3f}, useful {engine['useful_tokens_per_s']:.1f} tok/s = "
              f"{engine['ratio_to_raw']:.2f} of raw decode at width {engine['width']}, {engine['saved']} caches "
              f"saved and {engine['restored']} restored, peak {gigabytes(engine)} GB, "
              + (f"static attention over {engine['span']} positions" if engine.get("span") else "dynamic attention"))
    late = figures.get("decode_late")
    if late:
        print(f"decode at width {late['width']}, tok/s after the prompt and from position {late['prompt']}:")
        for attention in ("dynamic", "static"):
            early, later = late[attention]
            spans = f" (over {early['span']} and {later['span']} positions)" if early["span"] else ""
            print(f"  {attention} attention{spans}: {early['tokens_per_s']:.1f} and {later['tokens_per_s']:.1f}, "
                  f"late / early {later['tokens_per_s'] / early['tokens_per_s']:.2f}")
    profiled_decode = next((entry for entry in figures["decode"].values() if entry and "profile" in entry), {})
    profiles = [("raw decode step", profiled_decode), ("engine iteration", engine or {})]
    for what, entry in profiles:
        profile = entry.get("profile")
        if profile and "error" in profile:
            print(f"{what}: no profile ({profile['error']})")
        elif profile:
            per_step = lambda value: 1e3 * value / profile["steps"]
            print(f"{what}: {per_step(profile['wall_s']):.2f} ms, device busy {per_step(profile['busy_s']):.2f} ms in "
                  f"{profile['op_runs'] / profile['steps']:.0f} op runs; most: " + ", ".join(
                      f"{top['op']} {per_step(top['ms'] / 1e3):.2f} ms" for top in profile["top"][:5]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["qwen2.5-math-1.5b", "qwen2.5-7b", "qwen3-8b-base", "phi-4-mini"],
                        choices=list(SHAPES))
    parser.add_argument("--tiny", action="store_true", help="the toy shape and sizes, for a CPU")
    parser.add_argument("--json", help="write every figure to this file, as it is measured")
    parser.add_argument("--deadline-s", type=float, help="start no measurement after this many seconds")
    args = parser.parse_args(argv)
    shapes, settings = (["tiny"], TINY) if args.tiny else (args.shapes, PAPER)
    platform = jax.devices()[0].platform
    reference_device = "cuda" if platform == "gpu" else "cpu"
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform}); settings {settings}", flush=True)
    check = Check(dict(jax=jax.__version__, device=jax.devices()[0].device_kind, settings=settings, shapes=[]),
                  args.json, args.deadline_s)
    for name in shapes:
        check_shape(name, settings, reference_device, check)
    check.save()
    for figures in check.results["shapes"]:
        print_table(figures)
    for label, error in check.results["errors"].items():
        print(f"failed: {label}: {error}")
    if check.results["skipped"]:
        print(f"skipped past the deadline: {', '.join(check.results['skipped'])}")
    return check.results


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
