"""The continuous-batching engine against raw decode and against lockstep batches.

(a) Aggregate decode tokens/s of the embedded models against the batch width, with the cache sized
    for the study (a 160-token prompt block + T_max 384) and EOS disabled; llama.cpp's batch-1
    tokens/s on the same GGUF as the reference line, when llama-cpp-python is installed
    (`pip install "ppl-ecmh[bench]"`, a benchmark dependency only).
(b) ecmh and karan-du with the study's settings (alpha 4, T_max 384, B 96, N_MCMC 4) on the first
    `--problems` GSM8K problems, `--chains` chains each (one, as the study ran), on the engine at
    `--width` slots (default: its default width, capped by the work), narrowing the batch in the
    drain unless --no-narrow:
    occupancy (useful row-tokens / slot-iterations), useful tokens/s and
    its ratio to raw decode at the full width (also with the seconds JAX spent compiling left out
    of the engine's wall time: it compiles its loop again for each width of the drain), and the
    occupancy the same proposals would have had in lockstep batches of 8 (each step of a batch
    waits for its longest suffix). Raw decode (the median of three timings) is measured over its
    first 64 tokens after the prompt and over all T_max tokens, before the engine runs, and over
    its first 64 again after them: the machine's speed may have drifted meanwhile. A decode step
    attends up to the batch's furthest live position, and the engine's slots sit anywhere in the
    completion, so the first figure is the rate of the cheapest positions and the second that of
    the whole cache. Also a digest of the records (draws and discrete step fields), the same for
    runs that differ only in how they were scheduled. `--static-attention on` runs the engine's attention over spans (loops of known trip count, its
    default off a CPU) on any backend: its records must be the same. (a) can be skipped with
    `--models` and no model.

Every ratio is between figures of this one run, on this machine; wall times include compilation.

    python -m benchmarks.engine [--models smollm2-135m qwen2.5-coder-0.5b] [--widths 1 8 16 32 64]
                                [--problems 16] [--chains 1] [--width W] [--no-narrow] [--min-width 1]
                                [--static-attention default|on|off] [--samplers ecmh karan-du] [--json FILE]
"""

import argparse
import contextlib
import hashlib
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.decode import timed, without_eos
from ppl_ecmh import load_model
from ppl_ecmh.engine import Engine
from ppl_ecmh.lm import generation
from ppl_ecmh.lm.registry import EMBEDDED_MODELS
from ppl_ecmh.runner import DEFAULT_WIDTH, SamplerSpec, engine_items
from ppl_ecmh.tasks import get_task

GSM8K = Path(__file__).resolve().parents[2] / "shared/data/gsm8k_test.jsonl"
STUDY = dict(alpha=4.0, max_new_tokens=384, block_size=96, num_mcmc_steps=4)
PROMPT_BLOCK, NEW_TOKENS = 160, 64


def decode_timer(lm, width: int, prompt_block: int = PROMPT_BLOCK, max_new_tokens: int = STUDY["max_new_tokens"],
                 new_tokens: int = NEW_TOKENS, static_attention: bool | None = None):
    """Raw decode, compiled here: `width` rows decoding `new_tokens` tokens each after a
    `prompt_block` prompt, the cache sized for `max_new_tokens`, EOS disabled; `static_attention`
    as `generation.extend`'s. Returns a timer: `timer(run)` decodes once more (run-th key) and
    returns its seconds."""
    seqs = generation.new_sequences([[1] * prompt_block] * width, max_new_tokens, pad_id=0)
    lm = without_eos(lm)
    cache = jax.jit(generation.prefill)(lm, seqs)
    limit = jnp.full(width, new_tokens, jnp.int32)
    decode = jax.jit(lambda lm, key, seqs, cache: generation.extend(
        lm, key, seqs, cache, jnp.zeros(width, jnp.int32), limit, 1.0, static_attention))
    timer = lambda run: timed(decode, lm, jax.random.key(run), seqs, cache)[1]
    timer(0)  # compile
    return timer


def decode_rate(lm, width: int, prompt_block: int = PROMPT_BLOCK, max_new_tokens: int = STUDY["max_new_tokens"],
                new_tokens: int = NEW_TOKENS, trace_dir: str | None = None, repeats: int = 3,
                static_attention: bool | None = None) -> float:
    """Tokens/s of `decode_timer`'s raw decode: the median of `repeats` timed runs after the
    compiling one (a shared machine's speed drifts); with `trace_dir`, one more run is profiled
    into it."""
    timer = decode_timer(lm, width, prompt_block, max_new_tokens, new_tokens, static_attention)
    seconds = float(np.median([timer(1 + run) for run in range(repeats)]))
    if trace_dir:
        with jax.profiler.trace(trace_dir):
            timer(1 + repeats)
    return width * new_tokens / seconds


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def compile_seconds():
    """[seconds] JAX spends tracing, lowering and compiling inside the block, as its monitoring
    events report them: the engine compiles its loop again for every width of a drain, which raw
    decode, timed after its compile, never pays."""
    spent = [0.0]

    def listener(event: str, duration: float, **_):
        if event in COMPILE_EVENTS:
            spent[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield spent
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def llama_cpp_rate(model_name: str) -> float | None:
    """llama.cpp's batch-1 decode tokens/s on the model's GGUF (2 threads), or None without it."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(EMBEDDED_MODELS[model_name].locate()), n_ctx=PROMPT_BLOCK + 384, n_threads=2,
                n_batch=PROMPT_BLOCK, verbose=False)
    llm.eval([1] * PROMPT_BLOCK)
    start = time.perf_counter()
    for _ in range(NEW_TOKENS):
        llm.eval([llm.sample(temp=1.0)])
    return NEW_TOKENS / (time.perf_counter() - start)


def lockstep_occupancy(results, batch: int = 8) -> float:
    """Occupancy of the same proposals in lockstep batches: every step of a batch runs for as many
    iterations as its longest proposal, for every row."""
    useful = iterations = 0
    ordered = sorted(results, key=lambda r: r.item.tag)
    for start in range(0, len(ordered), batch):
        lengths = np.stack([r.steps["new_suffix_length"] for r in ordered[start : start + batch]])  # [rows, steps]
        useful += lengths.sum()
        iterations += len(lengths) * lengths.max(axis=0).sum()
    return float(useful / iterations)


DISCRETE_STEP_FIELDS = ("accepted", "cut", "new_suffix_length", "old_suffix_length")


def records_digest(results) -> str:
    """The first 8 hex digits of a SHA-256 over every chain's draws and the discrete fields of its
    step records, in tag order: runs whose records are the same (whatever the width or narrowing)
    print the same. The acceptance probability is left out: on a transformer it can differ in its
    last bits between batch widths."""
    digest = hashlib.sha256()
    for result in sorted(results, key=lambda r: r.item.tag):
        for array in (result.tokens, result.length, *(result.steps[name] for name in DISCRETE_STEP_FIELDS)):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:8]


def by_width(stats, raw_at: dict, raw_rate) -> dict:
    """The engine's run by batch width (the drain narrows it): its seconds, iterations and useful
    tokens at each width, against raw decode at that width (`raw_rate(width)`, measured once per
    width into `raw_at`). `raw_seconds` is how long raw decode would take for the same tokens;
    `raw_step_seconds` how long it would take for the same iterations (idle slots included): the
    engine's time if its loop cost raw decode's step."""
    account = {}
    for width, share in sorted(stats.by_width.items(), reverse=True):
        if width not in raw_at:
            raw_at[width] = raw_rate(width)
        account[width] = dict(iterations=share.iterations, decoded=share.decoded, seconds=share.seconds,
                              raw_decode_tokens_per_s=raw_at[width], raw_seconds=share.decoded / raw_at[width],
                              raw_step_seconds=share.iterations * width / raw_at[width])
    return account


def print_by_width(name: str, account: dict):
    wall = sum(a["seconds"] for a in account.values())
    raw_seconds = sum(a["raw_seconds"] for a in account.values())
    print(f"{name:>15}: by width {'iterations':>10} {'useful tokens':>13} {'seconds':>8} {'share':>6} "
          f"{'useful tok/s':>12} {'raw tok/s':>9} {'/ raw':>6}")
    for width, a in account.items():
        rate = a["decoded"] / a["seconds"]
        print(f"{'':>15}  {'W=' + str(width):>8} {a['iterations']:10d} {a['decoded']:13d} {a['seconds']:8.1f} "
              f"{a['seconds'] / wall:6.2f} {rate:12.1f} {a['raw_decode_tokens_per_s']:9.1f} "
              f"{rate / a['raw_decode_tokens_per_s']:6.2f}")
    print(f"{'':>15}  raw decode at the same widths would take {raw_seconds:.1f} s: {raw_seconds / wall:.2f} of the wall")
    widest = account[max(account)]
    steps = sum(a["raw_step_seconds"] for a in account.values())
    decoded = sum(a["decoded"] for a in account.values())
    print(f"{'':>15}  the same iterations at raw decode's step cost: {steps:.1f} s, {steps / wall:.2f} of the wall; "
          f"a loop as fast as raw decode, with this run's idle slots and drain, would reach useful/raw "
          f"{decoded / steps / widest['raw_decode_tokens_per_s']:.2f}")


def gsm8k_prompts(model, count: int):
    task = get_task("gsm8k")
    problems = task.load(str(GSM8K) if GSM8K.exists() else None)
    order = np.random.default_rng(0).permutation(len(problems))  # the study's seeded subset
    problems = [problems[i] for i in order[:count]]
    return problems, [model.encode(task.prompt(p, chat=True), chat=True) for p in problems]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["smollm2-135m", "qwen2.5-coder-0.5b"], help="(a); none: skip (a)")
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--study-model", default="qwen2.5-coder-0.5b", help="the model of (b)")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--chains", type=int, default=1, help="(b): chains per problem")
    parser.add_argument("--width", type=int, help="(b): slots (default: the default width, capped by the work)")
    parser.add_argument("--no-narrow", action="store_true", help="(b): keep the full width through the drain")
    parser.add_argument("--min-width", type=int, default=1, help="(b): the narrowest width of the drain")
    parser.add_argument("--static-attention", choices=["default", "on", "off"], default="default",
                        help="(b): attention loops of known trip count over spans (the engine's default off a CPU)")
    parser.add_argument("--samplers", nargs="+", default=["ecmh", "karan-du"])
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    figures = dict(decode={}, engine={})
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}\n\n(a) decode tokens/s, cache {PROMPT_BLOCK}+384")
    print(f"{'model':>20} " + " ".join(f"{'W=' + str(w):>8}" for w in args.widths) + f" {'llama.cpp b=1':>14}")
    for name in args.models:
        lm = load_model(name).lm
        rates = {width: decode_rate(lm, width) for width in args.widths}
        reference = llama_cpp_rate(name)
        figures["decode"][name] = dict(rates=rates, llama_cpp_batch1=reference)
        print(f"{name:>20} " + " ".join(f"{rates[w]:8.1f}" for w in args.widths)
              + (f" {reference:14.1f}" if reference else f" {'not installed':>14}"), flush=True)

    model = load_model(args.study_model)
    problems, prompts = gsm8k_prompts(model, args.problems)
    block = max(len(p) for p in prompts)
    stages = math.ceil(STUDY["max_new_tokens"] / STUDY["block_size"])
    width = args.width or min(DEFAULT_WIDTH, args.problems * args.chains)
    raw = decode_rate(model.lm, width)
    raw_to_limit = decode_rate(model.lm, width, new_tokens=STUDY["max_new_tokens"])
    print(f"\n(b) the engine on {args.problems} GSM8K problems x {args.chains} chains, {args.study_model}, W={width} "
          f"(raw decode at W={width}: {raw:.1f} tok/s over its first {NEW_TOKENS} tokens, {raw_to_limit:.1f} over "
          f"all {STUDY['max_new_tokens']})")
    print(f"{'sampler':>15} {'occupancy':>9} {'lockstep(8)':>11} {'useful tok/s':>12} {'/ raw':>6} {'/ raw T':>7} "
          f"{'saved':>6} {'restored':>8} {'wall s':>7} {'compile s':>9} "
          f"{'/ raw, less compiles':>20} {'records':>8}")
    raw_at = {width: raw}  # raw decode tokens/s by width, for the drain's account
    for sampler in args.samplers:
        spec = SamplerSpec(sampler, block_size=STUDY["block_size"], num_mcmc_steps=STUDY["num_mcmc_steps"])
        schedule = spec.schedule(STUDY["alpha"], STUDY["max_new_tokens"], stages)
        items = engine_items(prompts, jax.random.PRNGKey(0), args.chains)
        engine = Engine(model.lm, schedule, width=width, prompt_block=block, narrow=not args.no_narrow,
                        min_width=args.min_width, static_attention=dict(default=None, on=True, off=False)[args.static_attention])
        started = time.perf_counter()
        with compile_seconds() as compiling:
            results = list(engine.run(items))
        seconds = time.perf_counter() - started
        stats = engine.stats
        useful = stats.decoded / seconds
        running = stats.decoded / (seconds - compiling[0])
        figures["engine"][sampler] = row = dict(
            width=width, occupancy=stats.occupancy, lockstep_occupancy=lockstep_occupancy(results),
            useful_tokens_per_s=useful, raw_decode_tokens_per_s=raw, raw_decode_to_limit_tokens_per_s=raw_to_limit,
            saved=stats.saved, restored=stats.restored, decoded=stats.decoded, wall_s=seconds, compile_s=compiling[0],
            useful_tokens_per_s_less_compiles=running, narrow=not args.no_narrow, min_width=args.min_width,
            static_attention=engine.static_attention, chains=args.chains, records=records_digest(results))
        print(f"{sampler:>15} {row['occupancy']:9.3f} {row['lockstep_occupancy']:11.3f} {useful:12.1f} "
              f"{useful / raw:6.2f} {useful / raw_to_limit:7.2f} {stats.saved:6d} {stats.restored:8d} "
              f"{seconds:7.1f} {compiling[0]:9.1f} {running / raw:20.2f} {row['records']:>8}", flush=True)
        row["by_width"] = by_width(stats, raw_at, lambda w: decode_rate(model.lm, w))
        print_by_width(sampler, row["by_width"])

    raw_after = figures["raw_decode_after_tokens_per_s"] = decode_rate(model.lm, width)
    print(f"\nraw decode at W={width} again, after the engine: {raw_after:.1f} tok/s (before: {raw:.1f}); useful/raw "
          "against it: " + ", ".join(f"{name} {row['useful_tokens_per_s'] / raw_after:.2f}"
                                     for name, row in figures["engine"].items()), flush=True)

    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
