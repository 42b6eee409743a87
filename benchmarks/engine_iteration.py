"""What one decode iteration of the engine's loop costs against one of raw batched decode.

Both at the same width on the same model, EOS disabled, the cache sized for the study (a
160-token prompt block + T_max 384): the engine runs ecmh's block-wise schedule (alpha 4, B 96,
N_MCMC 4) on that many chains of random prompts, first `--warmup` iterations untimed (past the
chains' first steps, so that the slots sit at different positions), then `--iterations` at a
time; raw decode (`benchmarks.engine.decode_timer`) decodes as many tokens from two starts, just
after the prompt and `--iterations` short of the cache's end, which bracket where a batch's
attention reaches. The
timings interleave, `--repeats` times, so a shared machine's drift falls on both alike; the
medians' ratios are printed. An engine iteration attends up to its batch's furthest live
position, printed beside it.

This isolates the loop's own cost (the slots' bookkeeping, the accept/reject, the copies) from
what `benchmarks/engine.py` also counts: idle slots, the drain's narrower batches, and compiles.

    python -m benchmarks.engine_iteration [--model qwen2.5-coder-0.5b] [--width 16] [--iterations 32]
                                          [--warmup 192] [--repeats 5]
"""

import argparse

import jax
import numpy as np

from benchmarks.accelerator import admitted_slots, engine_schedule
from benchmarks.decode import timed, without_eos
from benchmarks.engine import PROMPT_BLOCK, STUDY, decode_timer
from ppl_ecmh import load_model
from ppl_ecmh.engine import slots as device
from ppl_ecmh.engine.scheduler import _advance


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=32, help="decode iterations per timing")
    parser.add_argument("--warmup", type=int, default=192, help="engine iterations run untimed first")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lm = without_eos(load_model(args.model).lm)
    settings = dict(prompt=PROMPT_BLOCK, max_new_tokens=STUDY["max_new_tokens"], block_size=STUDY["block_size"],
                    num_mcmc_steps=STUDY["num_mcmc_steps"], chains=args.width)
    schedule = engine_schedule(settings)
    slots = _advance(admitted_slots(lm, settings, schedule), lm, args.warmup, 1, schedule, None)
    cache_size = PROMPT_BLOCK + STUDY["max_new_tokens"]
    starts = (PROMPT_BLOCK, cache_size - args.iterations)
    raws = {start: decode_timer(lm, args.width, start, cache_size - start, args.iterations) for start in starts}
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.model}, width {args.width}: ms per decode "
          f"iteration, {args.iterations} iterations per timing")
    print(f"{'engine':>8} {'furthest':>8} " + " ".join(f"{'raw from ' + str(s):>14}" for s in starts))
    costs = []
    for _ in range(args.repeats):
        before = int(slots.counters.iterations)
        slots, seconds = timed(lambda s: _advance(s, lm, args.iterations, 1, schedule, None), slots)
        engine = seconds / (int(slots.counters.iterations) - before)
        furthest = int(np.asarray(device.feeding_position(slots))[np.asarray(slots.busy)].max())
        costs.append([engine] + [raws[start](1) / args.iterations for start in starts])
        print(f"{engine * 1e3:8.1f} {furthest:8d} " + " ".join(f"{c * 1e3:14.1f}" for c in costs[-1][1:]), flush=True)
    median = np.median(np.array(costs), axis=0)
    print(f"median: engine {median[0] * 1e3:.1f} ms, " + ", ".join(
        f"raw from {s} {m * 1e3:.1f} ms (engine / raw {median[0] / m:.2f})" for s, m in zip(starts, median[1:])))


if __name__ == "__main__":
    main()
