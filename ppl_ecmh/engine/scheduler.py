"""The engine's host side: a queue of chains fed into W slots (DESIGN section 7).

The host admits queued chains into free slots (one batched prefill), lets the device loop run
until a chain finishes or `iterations_per_trip` decode iterations have passed, then collects the
finished chains and admits more. One host trip per finished chain or per trip, never per token.
Once the queue is empty the run drains: when no more than half the slots are busy, the host moves
the busy ones into a batch half as wide (or narrower, down to `min_width`), whose decode steps
cost less.

    engine = Engine(lm, schedule, width=32, prompt_block=128)
    for result in engine.run([WorkItem(prompt, chain_key(seed, "ecmh", problem_id, chain)), ...]):
        ...  # ChainResult, in the order chains finish
"""

from __future__ import annotations

import collections
import dataclasses
import time
import zlib
from typing import Any, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppl_ecmh import parallel
from ppl_ecmh.engine import slots as device
from ppl_ecmh.engine.schedule import Schedule
from ppl_ecmh.validation import check_positive_int


def chain_key(seed: int, sampler: str, problem: int | str, chain: int) -> np.ndarray:
    """The key of one chain of work: fold_in of the seed, the sampler, the problem and the chain.
    Problems named by a string (a task's problem id) are folded in by their CRC-32."""
    key = jax.random.PRNGKey(seed)
    problem_part = zlib.crc32(problem.encode()) if isinstance(problem, str) else int(problem)
    for part in (zlib.crc32(sampler.encode()), problem_part, chain):
        key = jax.random.fold_in(key, part)
    return np.asarray(key)


@dataclasses.dataclass(frozen=True)
class WorkItem:
    prompt: Sequence[int]
    key: np.ndarray  # from `chain_key`
    tag: Any = None  # the caller's name for this chain, handed back in its result
    start: Sequence[int] | None = None  # a completion to start the chain from; None: a proposal draw


@dataclasses.dataclass
class ChainResult:
    item: WorkItem
    steps: dict  # per step [num_steps]: accepted, accept_prob, cut, old/new_suffix_length
    tokens: np.ndarray  # [num_draws, T] completion tokens, 0 past each draw's length
    entropy: np.ndarray  # [num_draws, T]
    length: np.ndarray  # [num_draws]
    log_target: np.ndarray  # [num_draws] alpha * log p of each draw
    seconds: float  # this chain's share of the wall time: of each stretch, in proportion to its busy iterations


@dataclasses.dataclass
class EngineStats:
    iterations: int = 0  # decode iterations
    slot_iterations: int = 0  # slots x iterations, at the width each iteration had
    decoded: int = 0  # useful proposal tokens, all slots
    saved: int = 0  # slot caches copied into their backup before a proposal overwrote them
    restored: int = 0  # slot caches copied back from their backup after a rejection
    width: int = 0  # slots at the start (the drain narrows the batch)
    seconds: float = 0.0

    @property
    def occupancy(self) -> float:
        """Useful row-tokens per slot-iteration: the share of each decode step that was not idle."""
        return self.decoded / max(1, self.slot_iterations)


class Engine:
    """Continuous batching of MH chains on one model: W slots, a queue, one compiled loop."""

    def __init__(self, lm, schedule: Schedule, *, width: int, prompt_block: int, iterations_per_trip: int = 64,
                 mesh=None, narrow: bool = True, min_width: int = 8):
        """`mesh` (`ppl_ecmh.parallel.make_mesh`): split the slots over its data axis and the
        weights over its model axis; None runs on the default device. `narrow`: halve the batch
        as the run drains, down to `min_width` slots (each narrower width compiles its loop once,
        and below a few slots a decode step of an accelerator costs no less)."""
        self.schedule, self.mesh = schedule, mesh
        self.width = check_positive_int("width", width)
        if mesh is not None:
            parallel.check_width(self.width, mesh)
            lm = parallel.shard_model(lm, mesh)
        self.lm = lm
        self.prompt_block = check_positive_int("prompt_block", prompt_block)
        self.iterations_per_trip = check_positive_int("iterations_per_trip", iterations_per_trip)
        self.narrow = narrow
        self.min_width = check_positive_int("min_width", min_width)
        self.stats = EngineStats(width=self.width)

    def run(self, items: Iterable[WorkItem], progress=None) -> Iterator[ChainResult]:
        """Run every item's chain; yield each result as soon as its chain is done. The device goes
        on with the other slots while the caller handles a result (grades it, say). `progress`, if
        given, is called with this engine's `stats` after every host trip."""
        queue = collections.deque(items)
        for item in queue:
            if not 1 <= len(item.prompt) <= self.prompt_block:
                raise ValueError(f"prompt: {len(item.prompt)} tokens; the engine takes 1 to {self.prompt_block}")
        if len({item.start is None for item in queue}) > 1:
            raise ValueError("start: give a starting completion for every chain of a run, or for none")
        width = self.width
        slots = _empty(self.lm, width, self.prompt_block, self.schedule)
        if self.mesh is not None:
            slots = parallel.shard_slots(slots, self.mesh, width)
        holder: list[WorkItem | None] = [None] * width
        charged = np.zeros(width)  # seconds charged to each slot's chain so far
        seen = np.zeros(width, np.int64)  # each slot's busy iterations when last read
        started = tick = time.perf_counter()
        slots = self._fill(slots, holder, seen, charged, queue)
        slots = _advance(slots, self.lm, self.iterations_per_trip, self._min_busy(holder, queue), self.schedule)
        while True:
            busy = np.asarray(slots.busy)  # waits for the device
            iterations = np.asarray(slots.counters.busy_iterations).astype(np.int64)
            now = time.perf_counter()
            spent = np.where([h is not None for h in holder], iterations - seen, 0)
            charged += (now - tick) * spent / max(1, spent.sum())
            tick, seen = now, iterations
            counters = slots.counters
            self.stats.iterations, self.stats.slot_iterations, self.stats.decoded = (
                int(counters.iterations), int(counters.slot_iterations), int(counters.decoded))
            self.stats.saved, self.stats.restored = int(counters.saved), int(counters.restored)
            self.stats.seconds = now - started
            finished = [slot for slot in range(len(holder)) if holder[slot] is not None and not busy[slot]]
            results = self._collect(slots, finished, [holder[slot] for slot in finished], charged[finished])
            for slot in finished:
                holder[slot] = None
            slots = self._fill(slots, holder, seen, charged, queue)
            if not queue:
                slots, holder, seen, charged = self._narrowed(slots, holder, seen, charged)
            more = any(holder)
            if more:  # dispatched before the results are handed out: the device runs meanwhile
                slots = _advance(slots, self.lm, self.iterations_per_trip, self._min_busy(holder, queue), self.schedule)
            if progress is not None:
                progress(self.stats)
            yield from results
            if not more:
                return

    def _min_busy(self, holder: list, queue) -> int:
        """When the device loop should come back: as soon as a slot is freed while work is queued;
        in the drain, once few enough slots are busy for `_narrowed` to narrow the batch; else
        when every slot is idle."""
        if queue:
            return sum(h is not None for h in holder)
        if not self.narrow:
            return 1
        half = len(holder) // 2
        return 1 + max((busy for busy in range(half + 1) if self._narrower_width(busy) <= half), default=0)

    def _narrower_width(self, busy: int) -> int:
        """The width for `busy` chains in the drain: a power of two (few programs compile), split
        evenly over the mesh."""
        return parallel.data_parallel_width(max(self.min_width, 1 << max(0, busy - 1).bit_length()), self.mesh)

    def _narrowed(self, slots, holder: list, seen: np.ndarray, charged: np.ndarray):
        """In the drain, the busy slots moved into a batch of `_narrower_width` slots, when that is
        at most half the present width."""
        live = [slot for slot in range(len(holder)) if holder[slot] is not None]
        width = self._narrower_width(len(live))
        if not self.narrow or not live or width > len(holder) // 2:
            return slots, holder, seen, charged
        keep = live + [slot for slot in range(len(holder)) if holder[slot] is None][: width - len(live)]
        slots = _narrowed(slots, jnp.asarray(keep))
        if self.mesh is not None:
            slots = parallel.shard_slots(slots, self.mesh, width)
        return slots, [holder[slot] for slot in keep], seen[keep], charged[keep]

    def _fill(self, slots, holder: list, seen: np.ndarray, charged: np.ndarray, queue: collections.deque):
        """Admit queued items into the free slots, each with a fresh account of iterations and time."""
        free = [slot for slot in range(len(holder)) if holder[slot] is None][: len(queue)]
        if not free:
            return slots
        admitted = [queue.popleft() for _ in free]
        for slot, item in zip(free, admitted):
            holder[slot], seen[slot], charged[slot] = item, 0, 0.0
        return self._admit(slots, free, admitted)

    def _collect(self, slots, finished: list[int], items: list[WorkItem], seconds) -> list[ChainResult]:
        """The records of the chains in the slots `finished`, copied to the host."""
        if not finished:
            return []
        index = jnp.asarray(finished)
        steps, draws = jax.device_get((jax.tree.map(lambda a: a[index], slots.steps),
                                       jax.tree.map(lambda a: a[index], slots.draws)))
        return [ChainResult(item, {name: values[row] for name, values in steps._asdict().items()},
                            draws.tokens[row], draws.entropy[row], draws.length[row], draws.log_target[row],
                            float(seconds[row]))
                for row, item in enumerate(items)]

    def _admit(self, slots, free: list[int], items: list[WorkItem]):
        """Prefill `items` into the slots `free`, in a batch padded to a power of two (few shapes)."""
        rows = min(self.width, 1 << (len(free) - 1).bit_length())
        index = np.full(rows, self.width, np.int32)  # padding rows point past the slots: dropped
        prompts = np.zeros((rows, self.prompt_block), np.int32)
        lengths = np.ones(rows, np.int32)
        keys = np.zeros((rows, 2), np.uint32)
        starts = None if items[0].start is None else np.zeros((rows, self.schedule.max_new_tokens), np.int32)
        for row, (slot, item) in enumerate(zip(free, items)):
            index[row], lengths[row], keys[row] = slot, len(item.prompt), item.key
            prompts[row, : len(item.prompt)] = item.prompt
            if starts is not None:
                starts[row, : len(item.start)] = item.start
        return _admit(slots, self.lm, jnp.asarray(index), jnp.asarray(prompts), jnp.asarray(lengths),
                      jnp.asarray(keys), None if starts is None else jnp.asarray(starts), self.schedule)


# Compiled once per (schedule, shapes). Slots are donated: the device updates them in place.
_empty = jax.jit(device.empty_slots, static_argnums=(1, 2, 3))
_admit = jax.jit(device.admit, static_argnums=(7,), donate_argnums=(0,))
_advance = jax.jit(device.advance, static_argnums=(4,), donate_argnums=(0,))
_narrowed = jax.jit(device.narrowed)  # a gather into new, narrower buffers: nothing to donate
