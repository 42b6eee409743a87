"""The engine's memory plan against what XLA's buffer assignment reports for the engine's own
compiled programs (admission and the decode loop), and the plan's arithmetic."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.accelerator import SHAPES, engine_schedule, random_transformer
from ppl_ecmh.engine import memory
from ppl_ecmh.engine import slots as device
from ppl_ecmh.engine.scheduler import ADMISSION_ROWS, _admit, _advance
from ppl_ecmh.lm.config import ModelConfig

TOY = dataclasses.replace(SHAPES["tiny"], vocab_size=4096, hidden_size=256, intermediate_size=512, num_heads=8,
                          num_kv_heads=2, head_dim=32, max_position_embeddings=1024)
TOYS = {
    "gqa": TOY,
    "mha-tied-qk-norm": dataclasses.replace(TOY, architecture="qwen3", num_kv_heads=8, attention_bias=False,
                                            qk_norm=True, tie_word_embeddings=True),
}


def schedule_settings(width: int, prompt: int, max_new_tokens: int) -> dict:
    """The accelerator check's block-wise schedule at these shapes: four blocks, four draws."""
    return dict(chains=width, prompt=prompt, max_new_tokens=max_new_tokens, block_size=max_new_tokens // 4,
                num_mcmc_steps=2)


def xla_peak(config: ModelConfig, dtype, width: int, prompt: int, max_new_tokens: int) -> int:
    """The larger of admission's and the decode loop's compiled peaks (abstract shapes, nothing
    allocated)."""
    lm = jax.eval_shape(lambda: random_transformer(config, dtype))
    schedule = engine_schedule(schedule_settings(width, prompt, max_new_tokens))
    slots = jax.eval_shape(lambda lm: device.empty_slots(lm, width, prompt, schedule), lm)
    group = min(width, ADMISSION_ROWS)  # as the engine admits
    rows, count = jax.ShapeDtypeStruct((group,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)
    admitted = (slots, lm, rows, jax.ShapeDtypeStruct((group, prompt), jnp.int32), rows,
                jax.ShapeDtypeStruct((group, 2), jnp.uint32), rows)
    admit = _admit.trace(*admitted, None, rows, schedule).lower().compile()
    advance = _advance.trace(slots, lm, count, count, schedule, None).lower().compile()
    return max(memory.compiled_peak(admit, admitted), memory.compiled_peak(advance, (slots, lm)))


@pytest.mark.parametrize("toy", list(TOYS))
@pytest.mark.parametrize("width, prompt, max_new_tokens", [(8, 16, 64), (32, 32, 256), (64, 64, 512)])
def test_plan_is_within_15_percent_of_xla(toy, width, prompt, max_new_tokens):
    """float32: XLA:CPU computes bfloat16 matmuls in float32, with float32 copies of the weights
    among its temporaries, which no accelerator makes; the bfloat16 plan is checked against
    XLA:GPU at the paper's shapes (benchmarks/gpu_compile.py)."""
    expected = xla_peak(TOYS[toy], jnp.float32, width, prompt, max_new_tokens)
    draws = engine_schedule(schedule_settings(width, prompt, max_new_tokens)).num_draws
    planned = memory.plan(TOYS[toy], "float32", prompt, max_new_tokens, width, num_draws=draws).peak
    assert abs(planned / expected - 1) <= 0.15, (planned, expected)


def test_every_kept_draw_is_planned_for_and_narrows_the_widest_width():
    """A draw keeps its tokens and entropies and those of what its step did not keep: 16 bytes a
    position, per slot; a chain that keeps thousands of long draws leaves room for fewer slots."""
    config, block, steps = SHAPES["qwen2.5-7b"], 256, 3072
    one, many = (memory.plan(config, "bfloat16", block, steps, 64, num_draws=n) for n in (1, 1001))
    assert many.caches - one.caches == 64 * 1000 * (16 * steps + memory.DRAW_RECORD_BYTES)
    h100 = 80 * 10**9
    assert memory.widest_width(config, "bfloat16", block, steps, h100, num_draws=20_000) < memory.widest_width(
        config, "bfloat16", block, steps, h100)


@pytest.mark.parametrize("toy", list(TOYS))
def test_parameter_count_is_the_decoders(toy):
    lm = jax.eval_shape(lambda: random_transformer(TOYS[toy], jnp.float32))
    weights = {k: v for k, v in lm.params.items() if k not in ("inv_freq", "rope_attention_factor")}
    assert memory.parameter_count(TOYS[toy]) == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(weights))


def test_widest_width_is_the_widest_power_of_two_that_fits():
    config, block, steps = SHAPES["qwen2.5-7b"], 256, 3072
    h100 = 80 * 10**9
    widest = memory.widest_width(config, "bfloat16", block, steps, h100)
    assert widest & (widest - 1) == 0 and widest >= 16
    assert memory.plan(config, "bfloat16", block, steps, widest, device_bytes=h100).fits
    assert not memory.plan(config, "bfloat16", block, steps, 2 * widest, device_bytes=h100).fits
    assert memory.widest_width(config, "bfloat16", block, steps, 141 * 10**9) > widest
    assert memory.widest_width(config, "float32", block, steps, 20 * 10**9) == 0  # the weights alone do not fit
    halves = memory.plan(config, "bfloat16", block, steps, 2 * widest, data_parallel=2, tensor_parallel=1)
    assert halves.caches == memory.plan(config, "bfloat16", block, steps, widest).caches


def test_an_accelerators_default_width_is_the_widest_that_fits(monkeypatch):
    from ppl_ecmh import runner
    from ppl_ecmh.errors import PplEcmhError

    lm = jax.eval_shape(lambda: random_transformer(SHAPES["qwen2.5-7b"], jnp.bfloat16))
    monkeypatch.setattr(memory, "device_memory", lambda device: 80 * 10**9)  # an H100, as its runtime reports
    assert runner.fitted_width(lm, 512, 3072, None) == 64
    assert runner.fitted_width(lm, 512, 3072, 48) == 48
    with pytest.raises(PplEcmhError, match="--batch-size 128 does not fit 80 GB per device.*widest that does is 64"):
        runner.fitted_width(lm, 512, 3072, 128)
    monkeypatch.setattr(memory, "device_memory", lambda device: None)  # a CPU: no fixed limit
    assert runner.fitted_width(lm, 512, 3072, None) == runner.DEFAULT_WIDTH
    assert runner.fitted_width(lm, 512, 3072, 1024) == 1024


def test_tensor_parallel_devices_split_projections_and_kv_heads_not_embeddings():
    config = SHAPES["qwen2.5-7b"]
    one, two = (memory.plan(config, "bfloat16", 128, 3072, 64, tensor_parallel=k) for k in (1, 2))
    embeddings = 2 * config.vocab_size * config.hidden_size * 2  # untied: embed and lm_head, bf16
    assert one.weights - two.weights == pytest.approx((one.weights - embeddings) / 2, rel=1e-3)
    assert two.caches == pytest.approx(one.caches / 2, rel=1e-3)


def test_narrowing_frees_each_wide_cache_array_as_it_copies_it():
    """The drain's narrowing holds the wide caches and one narrowed array at once: every wide
    array is deleted once copied, and the narrowed slots are `device.narrowed`'s, row for row."""
    from ppl_ecmh.engine import scheduler

    lm = random_transformer(TOY, jnp.float32)
    slots = device.empty_slots(lm, 8, 16, engine_schedule(dict(max_new_tokens=64, block_size=16, num_mcmc_steps=2)))
    rng = np.random.default_rng(0)
    slots = slots._replace(**{name: jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype),
                                                 getattr(slots, name)) for name in ("cache", "backup")})
    keep = jnp.asarray([5, 1, 2, 7])
    expected = jax.tree.map(np.asarray, device.narrowed(slots, keep))
    wide = jax.tree.leaves((slots.cache, slots.backup))
    narrow = scheduler.narrowed(slots, keep)
    assert all(array.is_deleted() for array in wide)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, narrow), expected)
