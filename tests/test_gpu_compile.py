"""The engine's loops compiled for a GPU, on this CPU (benchmarks/gpu_compile.py): no iteration copies
a cache. XLA:CPU elides copies that XLA:GPU keeps, so no CPU test can see this; the H200 run's engine
copied both whole caches at every iteration. The check must also see such copies when they are
there: a conditional around the caches, the mistake that made them, is caught.

Each compile runs in a process of its own, with JAX's CUDA plugin (installed by `make setup` into
a folder out of the suite's way) on its path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = Path(sys.prefix) / "gpu-compile"

pytestmark = pytest.mark.skipif(not PLUGIN.is_dir(), reason=f"no CUDA plugin in {PLUGIN}: `make setup` installs it")

CHECK = """
import json, sys
from benchmarks import gpu_compile
{patch}
figures = gpu_compile.check_shape(sys.argv[1], gpu_compile.compile_only_device())
print(json.dumps(figures))
"""

# The backup's save inside a conditional (the mistake the run-ahead fork once made): XLA:GPU copies
# the caches the conditional carries.
CONDITIONAL_SAVE = """
import jax, jax.numpy as jnp
from ppl_ecmh.engine import slots as device
save = device._backed_up
device._backed_up = lambda slots, starting, kept: jax.lax.cond(
    jnp.any(starting), lambda slots: save(slots, starting, kept), lambda slots: slots, slots)
"""


def compiled(shape: str, patch: str = "") -> dict:
    """gpu_compile's figures of a shape: its loops' and its memory plan against XLA:GPU's."""
    env = os.environ | dict(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(PLUGIN), str(ROOT)]))
    done = subprocess.run([sys.executable, "-c", CHECK.format(patch=patch), shape], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def compiled_loops(shape: str, patch: str = "") -> dict:
    return compiled(shape, patch)["loops"]


@pytest.fixture(scope="module")
def tiny():
    return compiled("tiny")


def assert_no_cache_copies(loops: dict) -> None:
    for loop, figures in loops.items():
        assert figures["cache_copies"] == 0 and figures["cache_copies_in_nested_loops"] == 0, (loop, figures)


def test_engine_loops_copy_no_cache_on_a_gpu(tiny):
    loops = tiny["loops"]
    assert_no_cache_copies(loops)
    # the engine's extra work per iteration is bookkeeping, not a second model: about raw decode's kernels again
    assert loops["engine"]["kernels"] < 3 * loops["raw_decode"]["kernels"]


def test_check_sees_the_copies_of_a_conditional_around_the_caches():
    assert compiled_loops("tiny", CONDITIONAL_SAVE)["engine"]["cache_copies"] > 0


# Attention chunks of 16 positions: the toy shape's 40-position cache then takes an attention loop.
SMALL_CHUNKS = """
from ppl_ecmh.lm import transformer
transformer.ATTENTION_CHUNK = 16
"""


def test_static_attention_leaves_no_attention_loop_waiting_on_the_host():
    """Up to the furthest live position, each layer's attention loop has a trip count XLA cannot
    know, so XLA:GPU waits on the host at each of its trips; over a span, none does (what is left
    are the slot-copy loops, empty at most iterations)."""
    loops = compiled_loops("tiny", SMALL_CHUNKS)
    assert_no_cache_copies(loops)
    layers = 2  # the toy shape's
    dynamic, static = loops["engine"]["host_waiting_loops"], loops["engine_static_attention"]["host_waiting_loops"]
    assert dynamic == static + layers and static <= 2, loops
    # raw decode (the lockstep samplers' loop): one attention loop per layer waits, dynamically; over
    # spans 32 and the 40-position cache, one decode loop per span, and nothing in them waits
    raw, spanned = loops["raw_decode"], loops["raw_decode_static_attention"]
    assert (raw["outer_loops"], raw["host_waiting_loops"]) == (1, layers), loops
    assert (spanned["outer_loops"], spanned["host_waiting_loops"]) == (2, 0), loops
    assert abs(spanned["kernels"] - raw["kernels"]) <= 2, loops  # the same step, less the reach the loops computed


def test_memory_plan_is_within_15_percent_of_xla_gpu_in_bfloat16(tiny):
    """XLA:GPU's buffer assignment for admission and the loop, bf16 weights and caches: what the
    plan is for (XLA:CPU widens bf16 matmuls to f32, so tests/test_memory.py checks f32 there)."""
    assert abs(tiny["memory"]["plan_over_xla"] - 1) <= 0.15, tiny["memory"]


@pytest.mark.slow
def test_engine_loops_copy_no_cache_on_a_gpu_at_the_paper_shape():
    figures = compiled("qwen2.5-math-1.5b")
    assert_no_cache_copies(figures["loops"])
    assert abs(figures["memory"]["plan_over_xla"] - 1) <= 0.15, figures["memory"]
