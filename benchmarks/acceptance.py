"""Random cut vs entropy cut on the embedded model: acceptance, cut positions, where cuts land.

For a few short math prompts: 4 chains of each kernel (alpha 4, tau 1/4), acceptance rate, mean
cut / mean length, tokens decoded, the best completion; and, on proposal draws, the expected
entropy H_{t+1} at the cut under each cut distribution (does the entropy cut find the decisions?).

    python -m benchmarks.acceptance [--draws 12] [--max-new-tokens 48]
"""

import argparse

import jax
import numpy as np

from ppl_ecmh import load_model
from ppl_ecmh.runner import SamplerSpec, run_sampler
from ppl_ecmh.samplers import cuts

PROMPTS = [
    "What is 15 + 27? Answer with the number.",
    "A box has 3 red and 5 blue balls. How many balls are in the box?",
    "What is 9 times 8?",
    "If x + 4 = 10, what is x?",
]
KERNELS = {
    "random-cut": SamplerSpec("random-cut"),
    "entropy-cut (mixture)": SamplerSpec("entropy-cut", cut="mixture", cut_params=(("eps", 0.1),)),
    "entropy-cut (jump, published)": SamplerSpec("entropy-cut", cut="entropy_jump"),
}
CUT_DISTRIBUTIONS = {"uniform": cuts.Uniform(), "entropy(beta=1)": cuts.Entropy(1.0),
                     "entropy_jump(4)": cuts.EntropyJump(4.0), "mixture(0.1)": cuts.Mixture()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--alpha", type=float, default=4.0)
    args = parser.parse_args()
    model = load_model("smollm2-135m")
    print(f"alpha={args.alpha}, tau=1/alpha, 4 chains, {args.draws} MH steps, max_new_tokens={args.max_new_tokens}")
    print(f"{'prompt':>6} {'kernel':>30} {'accept':>7} {'cut/len':>8} {'tokens':>7} {'best alpha*logp':>15}")
    totals = {name: [] for name in KERNELS}
    for index, text in enumerate(PROMPTS):
        prompt = model.encode(text, chat=True)
        for name, spec in KERNELS.items():
            run = run_sampler(model.lm, prompt, spec, alpha=args.alpha, max_new_tokens=args.max_new_tokens,
                              num_chains=4, num_draws=args.draws, seed=index, progress=False)
            acceptance = run.stats["accepted"].mean()
            totals[name].append(acceptance)
            relative_cut = (run.stats["cut"] / np.maximum(run.stats["length"], 1)).mean()
            best = np.unravel_index(np.argmax(run.stats["log_target"]), run.stats["log_target"].shape)
            print(f"{index:6d} {name:>30} {acceptance:7.2f} {relative_cut:8.2f} {run.total_tokens:7d} "
                  f"{run.stats['log_target'][best]:15.2f}")
        text_best = model.decode(run.tokens[best][: int(run.stats["length"][best])])
        print(f"       best completion: {text_best!r}")
    print("\nmean acceptance over prompts: " + ", ".join(f"{k} {np.mean(v):.2f}" for k, v in totals.items()))

    print("\nexpected entropy H_{t+1} at the cut, over 16 proposal draws per prompt (nats)")
    prompts = [model.encode(t, chat=True) for t in PROMPTS for _ in range(4)]
    draws = run_sampler(model.lm, prompts, SamplerSpec("low-temp"), alpha=args.alpha, max_new_tokens=args.max_new_tokens,
                        num_chains=1, num_draws=0, progress=False)
    entropy, length = draws.entropy[0, 0], draws.stats["length"][0, 0]
    valid = np.arange(args.max_new_tokens)[None] < length[:, None]
    print(f"  mean over all positions: {entropy[valid].mean():.3f}")
    for name, cut in CUT_DISTRIBUTIONS.items():
        q = np.exp(np.asarray(jax.vmap(cut.log_prob)(entropy, length)))
        print(f"  {name:>16}: {np.mean(np.sum(q * np.where(valid, entropy, 0.0), axis=1)):.3f}")


if __name__ == "__main__":
    main()
