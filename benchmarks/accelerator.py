"""The accelerator check: paper-scale shapes on one GPU, our JAX path beside the reference's.

For each model shape (Qwen2.5-7B's and Qwen2.5-Math-1.5B's; random bfloat16 weights made on the
device, since no checkpoint can travel; EOS disabled, so lengths are controlled):

- decode tokens/s of the JAX runtime at widths 1, 16, 64 and 256, the cache sized for a 128-token
  prompt plus T_max 3072;
- the engine running ecmh's block-wise schedule (B 192, N_MCMC 10) on 64 chains for a fixed number
  of decode iterations: occupancy, useful tokens/s, and its ratio to raw decode at width 64;
- the reference's code path at the same shape and widths: transformers + PyTorch `generate` (what
  Karan and Du's code calls for every proposal), tokens/s and our ratio to it;
- peak device memory of each (None on a CPU).

It writes a JSON of every figure and prints a table. `--tiny` runs the same code at a toy shape in
seconds on a CPU (tests/test_accelerator_check.py does, so the script cannot rot).

    PYTHONPATH=. python3 -m benchmarks.accelerator --json accelerator.json      # on the GPU machine
    python -m benchmarks.accelerator --tiny                                      # anywhere
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.decode import without_eos
from benchmarks.engine import decode_rate
from ppl_ecmh.cuts import EntropyJump
from ppl_ecmh.engine import Schedule, chain_key
from ppl_ecmh.engine import slots as device
from ppl_ecmh.lm.config import ModelConfig, rope_inverse_frequencies
from ppl_ecmh.lm.transformer import Transformer

SHAPES = {
    "qwen2.5-7b": ModelConfig(architecture="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1e6,
                              attention_bias=True, max_position_embeddings=32768, eos_token_ids=(-1,)),
    "qwen2.5-math-1.5b": ModelConfig(architecture="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                     num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=1e4,
                                     attention_bias=True, tie_word_embeddings=True, max_position_embeddings=4096,
                                     eos_token_ids=(-1,)),
    "tiny": ModelConfig(architecture="qwen2", vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, attention_bias=True, max_position_embeddings=256,
                        eos_token_ids=(-1,)),
}
PAPER = dict(prompt=128, max_new_tokens=3072, block_size=192, mcmc_steps=10, chains=64, widths=(1, 16, 64, 256),
             new_tokens=64, engine_iterations=512)
TINY = dict(prompt=8, max_new_tokens=32, block_size=8, mcmc_steps=2, chains=4, widths=(1, 2), new_tokens=4,
            engine_iterations=24)


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
        return params

    make_layer = jax.jit(layer)
    keys = jax.random.split(jax.random.PRNGKey(seed), config.num_layers + 2)
    params = dict(embed=jax.jit(matrix, static_argnums=(1, 2))(keys[0], config.vocab_size, config.hidden_size),
                  layers=[make_layer(key) for key in keys[2:]], final_norm=jnp.ones(config.hidden_size, dtype),
                  inv_freq=jnp.asarray(rope_inverse_frequencies(config)))
    if not config.tie_word_embeddings:
        params["lm_head"] = jax.jit(matrix, static_argnums=(1, 2))(keys[1], config.vocab_size, config.hidden_size)
    return Transformer(params, config)


def peak_memory_gb() -> float | None:
    """The default device's peak memory in use, where the backend reports it (not on a CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None


def engine_rate(lm, settings: dict) -> dict:
    """ecmh's block-wise schedule on `chains` chains in as many slots for `engine_iterations`
    decode iterations (after one compiling call): occupancy and useful tokens/s."""
    width, prompt = settings["chains"], settings["prompt"]
    schedule = Schedule.blockwise(settings["max_new_tokens"], settings["block_size"], settings["mcmc_steps"],
                                  cut=EntropyJump(power=4.0), alpha=4.0, tau=0.25)
    slots = device.empty_slots(lm, width, prompt, schedule)
    keys = np.stack([chain_key(0, "ecmh", chain, 0) for chain in range(width)])
    prompts = np.random.default_rng(0).integers(0, lm.vocab_size, size=(width, prompt)).astype(np.int32)
    admit = jax.jit(device.admit, static_argnums=(8,), donate_argnums=(0,))
    advance = jax.jit(device.advance, static_argnums=(5,), donate_argnums=(0,))
    slots = admit(slots, lm, jnp.arange(width), jnp.asarray(prompts), jnp.full(width, prompt, jnp.int32),
                  jnp.asarray(keys), jnp.arange(width), None, schedule)
    slots = jax.block_until_ready(advance(slots, lm, 2, 1, False, schedule))  # compile
    before = jax.device_get(slots.counters)  # host copies: the slots are donated below
    started = time.perf_counter()
    slots = jax.block_until_ready(advance(slots, lm, settings["engine_iterations"], 1, False, schedule))
    seconds = time.perf_counter() - started
    iterations = int(slots.counters.iterations - before.iterations)
    decoded = int(slots.counters.decoded - before.decoded)
    return dict(width=width, iterations=iterations, decoded=decoded, seconds=seconds,
                saved=int(slots.counters.saved - before.saved), restored=int(slots.counters.restored - before.restored),
                occupancy=decoded / max(1, width * iterations), useful_tokens_per_s=decoded / seconds)


def reference_rate(config: ModelConfig, width: int, settings: dict, device_name: str) -> dict | None:
    """transformers + PyTorch `generate` at the same shape (random bfloat16 weights, sampling,
    exactly `new_tokens` new tokens), or None without them."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    hf_config = transformers.Qwen2Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=config.tie_word_embeddings)
    with torch.device(device_name):
        model = transformers.Qwen2ForCausalLM(hf_config).to(torch.bfloat16).eval()
    prompts = torch.randint(0, config.vocab_size, (width, settings["prompt"]), device=device_name)
    options = dict(max_new_tokens=settings["new_tokens"], min_new_tokens=settings["new_tokens"], do_sample=True,
                   top_k=0, pad_token_id=0)
    if device_name == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model.generate(prompts, max_new_tokens=2, min_new_tokens=2, do_sample=True, top_k=0, pad_token_id=0)
        if device_name == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(prompts, **options)
        if device_name == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 1e9 if device_name == "cuda" else None
    del model
    if device_name == "cuda":
        torch.cuda.empty_cache()
    return dict(tokens_per_s=width * settings["new_tokens"] / seconds, peak_memory_gb=peak)


def check_shape(name: str, settings: dict, reference_device: str) -> dict:
    config = SHAPES[name]
    started = time.perf_counter()
    lm = without_eos(random_transformer(config))
    figures = dict(shape=name, parameters=sum(x.size for x in jax.tree.leaves(lm.params)),
                   init_seconds=time.perf_counter() - started, decode={}, reference={})
    for width in settings["widths"]:
        figures["decode"][width] = dict(tokens_per_s=decode_rate(lm, width, settings["prompt"],
                                                                 settings["max_new_tokens"], settings["new_tokens"]),
                                        peak_memory_gb=peak_memory_gb())
        figures["reference"][width] = reference_rate(config, width, settings, reference_device)
    engine = engine_rate(lm, settings)
    raw = decode_rate(lm, settings["chains"], settings["prompt"], settings["max_new_tokens"], settings["new_tokens"])
    figures["engine"] = engine | dict(raw_decode_tokens_per_s=raw, ratio_to_raw=engine["useful_tokens_per_s"] / raw,
                                      peak_memory_gb=peak_memory_gb())
    del lm
    return figures


def print_table(figures: dict) -> None:
    print(f"\n{figures['shape']}: {figures['parameters'] / 1e9:.2f} B parameters")
    print(f"{'width':>5} {'ours tok/s':>10} {'reference tok/s':>15} {'ours/ref':>8} {'peak GB (ours)':>14}")
    for width, ours in figures["decode"].items():
        reference = figures["reference"][width]
        ref_rate = reference["tokens_per_s"] if reference else math.nan
        peak = ours["peak_memory_gb"]
        print(f"{width:>5} {ours['tokens_per_s']:10.1f} {ref_rate:15.1f} {ours['tokens_per_s'] / ref_rate:8.2f} "
              f"{'n/a' if peak is None else f'{peak:.1f}':>14}")
    engine = figures["engine"]
    print(f"engine, ecmh block-wise, {engine['width']} chains, {engine['iterations']} iterations: occupancy "
          f"{engine['occupancy']:.3f}, useful {engine['useful_tokens_per_s']:.1f} tok/s = "
          f"{engine['ratio_to_raw']:.2f} of raw decode at width {engine['width']}, {engine['saved']} caches saved and "
          f"{engine['restored']} restored")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["qwen2.5-math-1.5b", "qwen2.5-7b"], choices=list(SHAPES))
    parser.add_argument("--tiny", action="store_true", help="the toy shape and sizes, for a CPU")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    shapes, settings = (["tiny"], TINY) if args.tiny else (args.shapes, PAPER)
    platform = jax.devices()[0].platform
    reference_device = "cuda" if platform == "gpu" else "cpu"
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform}); settings {settings}")
    results = dict(jax=jax.__version__, device=jax.devices()[0].device_kind, settings=settings, shapes=[])
    for name in shapes:
        figures = check_shape(name, settings, reference_device)
        results["shapes"].append(figures)
        print_table(figures)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
