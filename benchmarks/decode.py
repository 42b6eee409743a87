"""Decode and prefill throughput of the JAX runtime on the embedded model.

Prints tokens/s for batched decode (batch 1, 4, 16; float32 and bfloat16 by default), prefill
tokens/s, and compile times. Every figure comes from one run on the same machine, so ratios between them are
meaningful even where absolute numbers are noisy.

    python -m benchmarks.decode [--model smollm2-135m] [--batches 1 4 16] [--dtypes float32 bfloat16]
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp

from ppl_ecmh import load_model
from ppl_ecmh.lm import generation


def without_eos(lm):
    """The same model with no end-of-sequence token, so generation runs exactly to its limit."""
    return dataclasses.replace(lm, config=dataclasses.replace(lm.config, eos_token_ids=(-1,)))


def timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a registered model, GGUF path or HF folder")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--context", type=int, default=512, help="KV cache length (prompt + new tokens)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt length for prefill")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; cache of {args.context} positions")
    print(f"{'dtype':>9} {'batch':>5} {'compile s':>9} {'decode tok/s':>12} {'ms/step':>8} {'prefill tok/s':>13}")
    for dtype in args.dtypes:
        model = load_model(args.model, dtype=dtype)
        words = model.encode(" ".join(["Write a short story about a robot who learns to paint."] * 64))
        prompt = words[: args.prompt_tokens]
        for batch in args.batches:
            seqs = generation.new_sequences([prompt] * batch, args.context - len(prompt), pad_id=2)
            limit = jnp.full(batch, args.new_tokens, jnp.int32)
            no_eos = without_eos(model.lm)

            @jax.jit
            def prefill(lm, seqs):
                return generation.prefill(lm, seqs)

            @jax.jit
            def decode(lm, key, seqs, cache):
                return generation.extend(lm, key, seqs, cache, jnp.zeros(batch, jnp.int32), limit, 1.0)

            cache, prefill_compile = timed(prefill, no_eos, seqs)
            _, prefill_seconds = timed(prefill, no_eos, seqs)
            _, decode_compile = timed(decode, no_eos, jax.random.key(0), seqs, cache)
            _, decode_seconds = timed(decode, no_eos, jax.random.key(1), seqs, cache)
            prompt_block = seqs.tokens.shape[1] - seqs.max_new_tokens
            print(f"{dtype:>9} {batch:5d} {prefill_compile + decode_compile:9.1f} "
                  f"{batch * args.new_tokens / decode_seconds:12.1f} {1000 * decode_seconds / args.new_tokens:8.1f} "
                  f"{batch * prompt_block / prefill_seconds:13.1f}")


if __name__ == "__main__":
    main()
