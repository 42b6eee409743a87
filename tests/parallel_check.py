"""Run in a fresh process with several forced host devices (tests/test_parallel.py): the engine's
records on one device and on data- and tensor-parallel meshes, and where the arrays were placed.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.parallel_check
"""

import collections
import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.accelerator import SHAPES, random_transformer
from ppl_ecmh import parallel
from ppl_ecmh.engine import Engine, Schedule, WorkItem, chain_key, scheduler
from ppl_ecmh.samplers import cuts

MESHES = {"data 4": (4, 1), "data 2 x model 2": (4, 2), "model 2": (2, 2)}


def tiny_model():
    """The accelerator check's tiny qwen2 shape (4 heads, 2 kv heads) with random weights, its
    embeddings scaled up so that completions end at token 0 at varied lengths."""
    lm = random_transformer(dataclasses.replace(SHAPES["tiny"], eos_token_ids=(0,)), dtype=jnp.float32)
    return type(lm)(dict(lm.params, embed=lm.params["embed"] * 50), lm.config)


def main() -> None:
    lm = tiny_model()
    schedule = Schedule.suffix_mh(12, 4, cut=cuts.EntropyJump(power=4.0), alpha=4.0, tau=0.25)
    items = [WorkItem([5, 6, 7, 10 + i % 9], chain_key(0, "parallel", i, 0), i) for i in range(16)]
    run = lambda mesh: {r.item.tag: r for r in Engine(lm, schedule, width=8, prompt_block=4, mesh=mesh).run(items)}
    base = run(None)
    report = {"devices": len(jax.devices()), "lengths": sorted({int(r.length[-1]) for r in base.values()})}
    for name, (devices, tensor_parallel) in MESHES.items():
        other = run(parallel.make_mesh(devices, tensor_parallel))
        report[name] = {
            "tokens_equal": all(np.array_equal(base[t].tokens, other[t].tokens) for t in base),
            "decisions_equal": all(np.array_equal(base[t].steps["accepted"], other[t].steps["accepted"]) for t in base),
            "log_target_max_diff": float(max(np.abs(base[t].log_target - other[t].log_target).max() for t in base)),
        }
    mesh = parallel.make_mesh(4, 2)  # where a data x model run keeps its arrays, after admission and decoding
    engine = Engine(lm, schedule, width=8, prompt_block=4, mesh=mesh)
    slots = parallel.shard_slots(scheduler._empty(engine.lm, 8, 4, schedule), mesh, 8)
    slots = engine._fill(slots, np.full(8, -1), {}, {}, itertools.count(), collections.deque(items))
    slots = scheduler._advance(slots, engine.lm, 16, True, schedule)
    spec = lambda array: [str(axis) for axis in array.sharding.spec]
    report["placement"] = {"tokens": spec(slots.current.tokens), "cache": spec(slots.cache.k[0]),
                           "wq": spec(engine.lm.params["layers"][0]["wq"]),
                           "wo": spec(engine.lm.params["layers"][0]["wo"]),
                           "embed": spec(engine.lm.params["embed"])}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
