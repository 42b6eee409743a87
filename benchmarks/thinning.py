"""NumPyro draws of several MH steps (`steps_per_draw`) against one step a draw, on real prompts.

With one step a draw every chain of a vectorized `MCMC` waits for the longest proposal of the
batch at every step; with k steps a draw the chains take their k steps asynchronously in the slot
loop and wait once per draw. Same kernel, chains, prompts and number of MH steps; the figures are
the wall time per MH step and the tokens decoded per second, and their ratios.

    python -m benchmarks.thinning [--model smollm2-135m] [--chains 8] [--steps 16] [--max-new-tokens 128]
"""

import argparse
import time

import jax
import numpy as np
from numpyro.infer import MCMC

from benchmarks.engine import gsm8k_prompts
from ppl_ecmh import EntropyCutMH, load_model, power_model


def timed_run(lm, prompts, steps_per_draw: int, args) -> tuple[float, int]:
    """Seconds and tokens decoded for `args.steps` MH steps per chain, compiled in a first run."""
    mcmc = MCMC(EntropyCutMH(power_model, steps_per_draw=steps_per_draw), num_warmup=0,
                num_samples=args.steps // steps_per_draw, num_chains=args.chains, chain_method="vectorized",
                progress_bar=False)
    model_kwargs = dict(alpha=4.0, max_new_tokens=args.max_new_tokens)
    mcmc.run(jax.random.PRNGKey(0), lm, prompts, extra_fields=("num_generated",), **model_kwargs)  # compile
    tick = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(1), lm, prompts, extra_fields=("num_generated",), **model_kwargs)
    jax.block_until_ready(mcmc.get_samples())
    return time.perf_counter() - tick, int(np.sum(mcmc.get_extra_fields()["num_generated"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16, help="MH steps per chain (a multiple of 4)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    model = load_model(args.model)
    _, prompts = gsm8k_prompts(model, args.prompts)
    print(f"{args.model}, {args.chains} chains x {args.prompts} GSM8K prompts, {args.steps} MH steps each, "
          f"T_max {args.max_new_tokens}, alpha 4")
    rows = {k: timed_run(model.lm, prompts, k, args) for k in (1, 4)}
    for k, (seconds, tokens) in rows.items():
        print(f"steps_per_draw={k}: {seconds / args.steps:6.2f} s per MH step, {tokens / seconds:6.1f} tokens/s")
    (one, one_tokens), (four, four_tokens) = rows[1], rows[4]
    print(f"ratio (4 a draw / 1 a draw): wall per step {four / one:.2f}, tokens/s "
          f"{(four_tokens / four) / (one_tokens / one):.2f}")


if __name__ == "__main__":
    main()
