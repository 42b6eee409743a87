"""Cost of a suffix-MH step on the embedded model.

(a) Time of one MH step for several (prefix, suffix) lengths: with the prefix's KV cache reused, it
    must grow with the suffix only. The cut is pinned at the prefix length and EOS disabled, so each
    step decodes exactly `suffix` tokens.
(b) Sampler tokens/s (random-cut MH steps, 4 chains) against plain batched decode tokens/s of the
    same model, batch and cache in the same run. Two ratios: kept tokens (what the chains get;
    rows of a batch wait for its longest suffix) and decode iterations (batch x longest suffix per
    step: the per-token bookkeeping overhead alone).

    python -m benchmarks.mh_step
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from ppl_ecmh import cuts, load_model, mh
from ppl_ecmh.lm import generation
from benchmarks.decode import timed, without_eos


@dataclasses.dataclass(frozen=True)
class PinnedCut:
    """All mass on cut t (benchmark only: not a valid proposal for inference)."""

    t: int

    def log_prob(self, entropy, length):
        return jnp.where(jnp.arange(entropy.shape[-1]) == self.t, 0.0, -jnp.inf)


def main():
    model = load_model("smollm2-135m")
    lm = without_eos(model.lm)
    prompt = model.encode("Tell me about the history of mathematics.", chat=True)
    total, batch = 288, 4
    seqs = generation.new_sequences([prompt] * batch, total, pad_id=2)
    full = jnp.full(batch, total, jnp.int32)
    state = jax.jit(mh.init)(jax.random.key(0), lm, seqs, 1.0, full)

    print("(a) one MH step, batch 4: seconds by prefix (kept tokens) and suffix (decoded tokens)")
    print(f"{'prefix':>7} {'suffix':>7} {'seconds':>8} {'ms/token':>9}")
    for prefix in (16, 128, 256):
        for suffix in (8, 32, 64):
            step = jax.jit(lambda key, state, lm, limit, t=prefix: mh.suffix_mh_step(
                key, state, lm, cut=PinnedCut(t), alpha=4.0, tau=0.25, limit=limit))
            limit = jnp.full(batch, prefix + suffix, jnp.int32)
            timed(step, jax.random.key(1), state, lm, limit)  # compile
            _, seconds = timed(step, jax.random.key(2), state, lm, limit)
            print(f"{prefix:7d} {suffix:7d} {seconds:8.3f} {1000 * seconds / suffix:9.1f}")

    print("\n(b) random-cut MH vs plain decode, batch 4, same cache")
    steps = 12
    step = jax.jit(lambda key, state, lm: mh.suffix_mh_step(key, state, lm, cut=cuts.Uniform(), alpha=4.0,
                                                            tau=0.25, limit=full))
    timed(step, jax.random.key(3), state, lm)
    generated, iterations, seconds, current = 0, 0, 0.0, state
    for i in range(steps):
        (current, info), s = timed(step, jax.random.key(10 + i), current, lm)
        generated += int(info.num_generated.sum())
        iterations += batch * int(info.num_generated.max())
        seconds += s
    decode = jax.jit(lambda key, seqs, cache, lm: generation.extend(lm, key, seqs, cache, jnp.zeros(batch, jnp.int32),
                                                                     jnp.full(batch, 64, jnp.int32), 0.25))
    cache = jax.jit(generation.prefill)(lm, seqs)
    timed(decode, jax.random.key(0), seqs, cache, lm)
    _, decode_seconds = timed(decode, jax.random.key(1), seqs, cache, lm)
    sampler_rate, decode_rate = generated / seconds, batch * 64 / decode_seconds
    print(f"sampler: {generated} kept tokens ({iterations} row-iterations) in {seconds:.2f} s over {steps} steps")
    print(f"decode:  {batch * 64} tokens in {decode_seconds:.2f} s = {decode_rate:.1f} tok/s")
    print(f"ratio kept tokens/s, sampler/decode     = {sampler_rate / decode_rate:.2f}")
    print(f"ratio row-iterations/s, sampler/decode  = {iterations / seconds / decode_rate:.2f}")


if __name__ == "__main__":
    main()
