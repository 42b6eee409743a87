"""The documented NumPyro API against `ppl-ecmh sample` on the same draws.

`MCMC(EntropyCutMH(power_model), chain_method="vectorized")` drives the engine's slots one draw
at a time; `run_sampler` on the engine (what `ppl-ecmh sample` runs) runs the chains through. With
the same seed both draw the same tokens (checked here). Printed: decode iterations and wall time
of each, each run once to compile and then `--repeats` times in alternation, timed with its
results ready, less the seconds JAX spent compiling inside the run (NumPyro compiles its sampling
loop again at every `MCMC.run`: its collection closure is new each time), and their ratios
(medians).

    python -m benchmarks.numpyro_api [--model smollm2-135m] [--chains 4] [--draws 25] [--max-new-tokens 64]
                                     [--repeats 3]
"""

import argparse
import time

import jax
import numpy as np
from numpyro.infer import MCMC

from benchmarks.engine import compile_seconds
from ppl_ecmh import load_model
from ppl_ecmh.runner import SamplerSpec, run_sampler

PROMPT = "What is 12 + 30? Answer with the number."


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=25)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = load_model(args.model)
    prompt = model.encode(PROMPT, chat=True)
    spec = SamplerSpec("entropy-cut")
    mcmc = MCMC(spec.make_kernel(), num_warmup=0, num_samples=args.draws, num_chains=args.chains,
                chain_method="vectorized", progress_bar=False)

    def through_numpyro(seed):
        tick = time.perf_counter()
        with compile_seconds() as compiling:
            mcmc.run(jax.random.PRNGKey(seed), model.lm, prompt, alpha=args.alpha, max_new_tokens=args.max_new_tokens)
            tokens = np.asarray(jax.block_until_ready(mcmc.get_samples(group_by_chain=True)["x"]))
        iterations = int(mcmc.last_state.sampler.slots.counters.iterations)
        return time.perf_counter() - tick - compiling[0], iterations, tokens

    def through_the_engine(seed):
        tick = time.perf_counter()
        with compile_seconds() as compiling:
            run = run_sampler(model.lm, prompt, spec, alpha=args.alpha, max_new_tokens=args.max_new_tokens,
                              num_chains=args.chains, num_draws=args.draws, num_warmup=0, seed=seed, progress=False)
        return time.perf_counter() - tick - compiling[0], run.settings["engine"]["iterations"], run.tokens

    print(f"{args.model}, {args.chains} chains x {args.draws} draws, T_max {args.max_new_tokens}, alpha {args.alpha}, "
          f"entropy cut; jax {jax.__version__} on {jax.devices()[0].platform}")
    runs = {"NumPyro MCMC": through_numpyro, "ppl-ecmh sample": through_the_engine}
    first = {name: run(0)[0] for name, run in runs.items()}  # compiles
    timed = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            timed[name].append(run(1))
    rows = {}
    for name, results in timed.items():
        seconds = [result[0] for result in results]
        rows[name] = (float(np.median(seconds)),) + results[-1][1:]
        print(f"{name:>16}: {rows[name][1]:5d} decode iterations, {rows[name][0]:6.1f} s less compiling (median "
              f"of {' '.join(f'{t:.1f}' for t in seconds)}; the first run {first[name]:.1f} s, its compiling left out)")
    (api_s, api_iterations, api_tokens), (cli_s, cli_iterations, cli_tokens) = rows.values()
    same = "the same tokens" if np.array_equal(api_tokens, cli_tokens) else "TOKENS DIFFER"
    print(f"NumPyro / CLI: iterations {api_iterations / cli_iterations:.3f}, wall time {api_s / cli_s:.2f}; {same}")


if __name__ == "__main__":
    main()
