"""What the sampler layer adds to plain generation: one ancestral batch through `run_sampler` (kernel
init, target lookup, statistics) against the same prefill + decode called directly, in one run.

The ratio should be close to 1: everything beyond decoding is bookkeeping. It was 1.53 on the GSM8K
study's batches with qwen2.5-coder-0.5b, until finding the power target stopped scoring a full
forward pass for the sharpen factor on every batch.

    python -m benchmarks.sampler_overhead [--model smollm2-135m] [--batch 8] [--new-tokens 128]
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks.decode import timed, without_eos
from ppl_ecmh import load_model
from ppl_ecmh.lm import generation
from ppl_ecmh.runner import SamplerSpec, run_sampler

PROMPTS = ["What is 12 + 30?", "Name three prime numbers.", "Write a haiku about rain.", "Explain recursion."]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    model = load_model(args.model)
    lm = without_eos(model.lm)  # every row decodes exactly --new-tokens
    prompts = [model.encode(PROMPTS[i % len(PROMPTS)], chat=True) for i in range(args.batch)]
    block = max(map(len, prompts))

    def sampler(seed):
        return run_sampler(lm, prompts, SamplerSpec("ancestral"), alpha=4.0, max_new_tokens=args.new_tokens,
                           num_chains=1, num_draws=0, seed=seed, prompt_block=block, progress=False)

    seqs = generation.new_sequences(prompts, args.new_tokens, pad_id=0, prompt_block=block)
    limit = jnp.full(args.batch, args.new_tokens, jnp.int32)
    prefill = jax.jit(generation.prefill)
    extend = jax.jit(lambda lm, key, seqs, cache: generation.extend(
        lm, key, seqs, cache, jnp.zeros(args.batch, jnp.int32), limit, 1.0))

    def direct(seed):
        return extend(lm, jax.random.key(seed), seqs, prefill(lm, seqs))

    for fn in (sampler, direct):  # compile both first
        jax.block_until_ready(fn(0))
    _, through_sampler = timed(sampler, 1)
    _, plain = timed(direct, 1)
    print(f"{args.model}, batch {args.batch}, {args.new_tokens} new tokens (prompt block {block})")
    print(f"run_sampler ancestral {through_sampler:.2f} s, prefill + decode {plain:.2f} s, "
          f"ratio {through_sampler / plain:.2f}")


if __name__ == "__main__":
    main()
