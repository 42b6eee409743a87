"""Every device of a host through jax.sharding (DESIGN section 8): a mesh with a data axis and a
model axis, the engine's slots split over the data axis, the weights replicated over it and, with
tensor parallelism, split over the model axis (attention heads and MLP columns).

Nothing here launches work: the engine's compiled programs take sharded arguments and jit inserts
the collectives the shardings imply (an all-reduce after each attention output and MLP down
projection under tensor parallelism; nothing per token under data parallelism but the loop's
"any slot still busy" reduction). No pmap, no per-device code.

    mesh = make_mesh(devices=4, tensor_parallel=2)   # 2 x 2: data x model
    lm = shard_model(lm, mesh)
    Engine(lm, schedule, width=64, prompt_block=128, mesh=mesh)
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"

# Weight name -> the axis split over MODEL, in the checkpoints' [out, in] layout: the q/k/v and
# gate/up projections by output rows (heads, MLP columns), the o and down projections by input
# columns (so each device's partial products are summed by one all-reduce).
_SPLIT_ROWS = ("wq", "wk", "wv", "w_gate", "w_up", "bq", "bk", "bv")
_SPLIT_COLUMNS = ("wo", "w_down")


def make_mesh(devices: int | None = None, tensor_parallel: int = 1) -> Mesh:
    """A (data, model) mesh over the first `devices` local devices (all of them by default), with
    `tensor_parallel` devices on the model axis."""
    available = jax.local_devices()
    count = len(available) if devices is None else devices
    if not 1 <= count <= len(available):
        raise ValueError(f"devices: {count} asked for, this host has {len(available)} "
                         f"({available[0].platform}); give 1 to {len(available)}")
    if tensor_parallel < 1 or count % tensor_parallel:
        raise ValueError(f"tensor_parallel: must divide the {count} devices; got {tensor_parallel}")
    grid = np.asarray(available[:count]).reshape(count // tensor_parallel, tensor_parallel)
    return Mesh(grid, (DATA, MODEL))


def check_tensor_parallel(config, tensor_parallel: int) -> None:
    """Refuse a degree that does not divide the heads, the key/value heads and the MLP width."""
    for name in ("num_heads", "num_kv_heads", "intermediate_size"):
        if getattr(config, name) % tensor_parallel:
            raise ValueError(f"tensor_parallel: {tensor_parallel} does not divide the model's {name} "
                             f"({getattr(config, name)})")


def data_parallel_width(width: int, mesh: Mesh | None) -> int:
    """`width` rounded up to a multiple of the mesh's data axis (the slots split evenly)."""
    ways = 1 if mesh is None else mesh.shape[DATA]
    return -(-width // ways) * ways


def check_width(width: int, mesh: Mesh) -> None:
    if width % mesh.shape[DATA]:
        raise ValueError(f"width: {width} slots do not split over {mesh.shape[DATA]} data-parallel devices; "
                         f"give a multiple of {mesh.shape[DATA]}")


def shard_model(lm, mesh: Mesh):
    """`lm` with its weights placed on the mesh: a transformer's split over MODEL as above, every
    other leaf (and any other model's weights) replicated."""
    if dataclasses.is_dataclass(lm) and hasattr(lm, "lm"):  # a wrapper such as TopK: shard what it wraps
        return dataclasses.replace(lm, lm=shard_model(lm.lm, mesh))
    params = getattr(lm, "params", None)
    if mesh.shape[MODEL] == 1:
        return jax.device_put(lm, NamedSharding(mesh, PartitionSpec()))
    if params is None:
        raise ValueError(f"tensor_parallel: splits a transformer's weights; {type(lm).__name__} has none to split")
    check_tensor_parallel(lm.config, mesh.shape[MODEL])

    def place(path, leaf):
        name = getattr(path[-1], "key", None)
        spec = (PartitionSpec(MODEL) if name in _SPLIT_ROWS else
                PartitionSpec(None, MODEL) if name in _SPLIT_COLUMNS else PartitionSpec())
        return jax.device_put(leaf, NamedSharding(mesh, spec))

    return type(lm)(jax.tree_util.tree_map_with_path(place, params), lm.config)


def shard_slots(slots, mesh: Mesh, width: int):
    """The engine's slot arrays split over DATA along their slot axis (the first), a transformer's
    KV cache [slot, kv_head, position, head_dim] also over MODEL by head; scalars replicated."""

    def place(leaf):
        if np.ndim(leaf) == 0 or leaf.shape[0] != width:
            return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec()))
        split_heads = np.ndim(leaf) == 4 and mesh.shape[MODEL] > 1 and leaf.shape[1] % mesh.shape[MODEL] == 0
        return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec(DATA, MODEL) if split_heads else PartitionSpec(DATA)))

    return jax.tree.map(place, slots)
