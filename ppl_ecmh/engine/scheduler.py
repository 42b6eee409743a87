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
import itertools
import time
import zlib
from typing import Any, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppl_ecmh import parallel
from ppl_ecmh.engine import slots as device
from ppl_ecmh.engine.schedule import Schedule
from ppl_ecmh.lm.spans import attention_span, uses_static_attention
from ppl_ecmh.validation import check_positive_int

# Prompts prefilled per admission call: admission holds a fresh cache of its rows beside the
# slots' working and backup caches, so admitting all W slots at once would take a third cache
# (`memory.plan`); 16 rows of a paper-sized prompt still fill an accelerator's prefill.
ADMISSION_ROWS = 16


def chain_key(seed: int, sampler: str, problem: int | str, chain: int) -> np.ndarray:
    """The key of one chain of work: fold_in of the seed, the sampler, the problem and the chain.
    Problems named by a string (a task's problem id) are folded in by their CRC-32."""
    key = jax.random.PRNGKey(seed)
    problem_part = zlib.crc32(problem.encode()) if isinstance(problem, str) else int(problem)
    for part in (zlib.crc32(sampler.encode()), problem_part, chain):
        key = jax.random.fold_in(key, part)
    return np.asarray(key)


def work_keys(keys, work_ids: Sequence[int]) -> jax.Array:
    """Keys of rows (chain, prompt) [chains * prompts, 2], chain-major: each chain's key [chains, 2]
    folded with each prompt's work id, so a prompt's draws depend on its id, not on its batch."""
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.key_data(keys)
    work = jnp.asarray(work_ids, jnp.uint32)
    return jax.vmap(lambda key: jax.vmap(lambda w: jax.random.fold_in(key, w))(work))(keys).reshape(-1, 2)


def chain_keys(rng_key, num_chains: int, work_ids: Sequence[int]) -> jax.Array:
    """`work_keys` of the chains NumPyro's MCMC makes from `rng_key` (the key itself for one chain,
    else `split(rng_key, num_chains)`): the rows' keys of `MCMC(kernel, num_chains=...).run(rng_key, ...)`."""
    keys = rng_key[None] if num_chains == 1 else jax.random.split(rng_key, num_chains)
    return work_keys(keys, work_ids)


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
    stats: dict  # per draw [num_draws]: `slots.draw_statistics` (log_target, length, accepted, ...)
    last_step: dict  # per draw, of its last step: accepted, accept_prob, and what it did not keep
    # (unkept_tokens, unkept_entropy [num_draws, T], unkept_length)
    initial_generated: int  # tokens decoded before the first draw's steps (suffix MH's initial completion)
    seconds: float  # this chain's share of the wall time: of each stretch, in proportion to its busy iterations

    @property
    def length(self) -> np.ndarray:
        return self.stats["length"]

    @property
    def log_target(self) -> np.ndarray:
        return self.stats["log_target"]


@dataclasses.dataclass
class WidthShare:
    """What the device loop did at one batch width: its decode iterations, the useful tokens they
    decoded, and the wall seconds between the host trips that bracket them (admission included)."""
    iterations: int = 0
    decoded: int = 0
    seconds: float = 0.0


@dataclasses.dataclass
class EngineStats:
    iterations: int = 0  # decode iterations
    slot_iterations: int = 0  # slots x iterations, at the width each iteration had
    decoded: int = 0  # useful proposal tokens, all slots
    saved: int = 0  # slot caches copied into their backup before a proposal overwrote them
    restored: int = 0  # slot caches copied back from their backup after a rejection
    width: int = 0  # slots at the start (the drain narrows the batch)
    seconds: float = 0.0
    by_width: dict = dataclasses.field(default_factory=dict)  # width -> WidthShare: where the drain's time went

    @property
    def occupancy(self) -> float:
        """Useful row-tokens per slot-iteration: the share of each decode step that was not idle."""
        return self.decoded / max(1, self.slot_iterations)


class Engine:
    """Continuous batching of MH chains on one model: W slots, a queue, one compiled loop."""

    def __init__(self, lm, schedule: Schedule, *, width: int, prompt_block: int, iterations_per_trip: int = 64,
                 mesh=None, narrow: bool = True, min_width: int = 8, static_attention: bool | None = None):
        """`mesh` (`ppl_ecmh.parallel.make_mesh`): split the slots over its data axis and the
        weights over its model axis; None runs on the default device. `narrow`: halve the batch
        as the run drains, down to `min_width` slots (each narrower width compiles its loop once,
        and below a few slots a decode step of an accelerator costs no less). `static_attention`: attention loops whose trip counts are known when compiled, over the
        smallest of the `attention_spans` that holds the slots' positions for the next trip (one
        program per span reached), instead of loops up to the furthest live position; XLA:GPU
        waits on the host at every trip of the latter. None: `static_attention_by_default()`. The
        records are the same (bit for bit on a CPU, tested)."""
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
        self.static_attention = uses_static_attention(static_attention)
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
        chains: dict[int, WorkItem] = {}  # the chains in the slots, by the number the device knows each by
        charged: dict[int, float] = {}  # seconds charged to each of those chains so far
        owner = np.full(width, -1)  # each slot's chain at the last trip (-1: free)
        seen = np.zeros(width, np.int64)  # each slot's busy iterations when last read
        numbers = itertools.count()
        started = tick = time.perf_counter()
        slots = self._fill(slots, owner, chains, charged, numbers, queue)
        slots = self._advance(slots, owner, queue, self.prompt_block - 1)
        while True:
            busy = np.asarray(slots.busy)  # waits for the device
            furthest = self._furthest(slots, busy)
            now_owner = np.asarray(slots.owner)
            iterations = np.asarray(slots.counters.busy_iterations).astype(np.int64)
            now = time.perf_counter()
            # each slot's iterations are charged to the chain it holds, or held before it was freed
            held = np.where(now_owner >= 0, now_owner, owner)
            spent = np.where(held >= 0, iterations - seen, 0)
            for chain, share in zip(held, (now - tick) * spent / max(1, spent.sum())):
                if chain >= 0:
                    charged[chain] += share
            tick, seen, owner = now, iterations, now_owner.copy()
            self._read_counters(slots.counters, now - started, len(owner))
            finished = [slot for slot in range(len(owner)) if owner[slot] >= 0 and not busy[slot]]
            done = [int(owner[slot]) for slot in finished]
            results = self._collect(slots, finished, [chains.pop(n) for n in done], [charged.pop(n) for n in done])
            if finished:
                owner[finished] = -1
                slots = _release(slots, jnp.asarray(owner < 0))
            admitting = bool(queue) and bool(np.any(owner < 0))
            slots = self._fill(slots, owner, chains, charged, numbers, queue)
            if admitting:  # a chain admitted now feeds its prompt's last position first
                furthest = max(furthest, self.prompt_block - 1)
            if not queue:
                slots, owner, seen = self._narrowed(slots, owner, seen)
            if chains:  # dispatched before the results are handed out: the device runs meanwhile
                slots = self._advance(slots, owner, queue, furthest)
            if progress is not None:
                progress(self.stats)
            yield from results
            if not chains:
                return

    def _advance(self, slots, owner: np.ndarray, queue, furthest: int):
        """Dispatch the device loop. `furthest`: the furthest position a slot feeds next, for the
        span of static attention."""
        return _advance(slots, self.lm, self.iterations_per_trip, self._min_busy(owner, queue), self.schedule,
                        self._span(furthest))

    def _furthest(self, slots, busy: np.ndarray) -> int:
        """The furthest position a busy slot feeds next, or a little past it (a slot whose step
        has nothing to decode feeds nothing); only read for static attention."""
        if not self.static_attention or not busy.any():
            return 0
        return int(np.asarray(device.feeding_position(slots))[busy].max())

    def _span(self, furthest: int) -> int | None:
        """The smallest span that holds every position the next trip can feed (the device loop
        stops early if a chain admitted with a long starting completion reaches further)."""
        if not self.static_attention:
            return None
        return attention_span(self.prompt_block + self.schedule.max_new_tokens, furthest + self.iterations_per_trip)

    def _read_counters(self, counters, seconds: float, width: int):
        """Update `stats` from the device's counters, charging what changed since the last trip to
        the batch width the loop ran at."""
        stats = self.stats
        share = stats.by_width.setdefault(width, WidthShare())
        share.iterations += int(counters.iterations) - stats.iterations
        share.decoded += int(counters.decoded) - stats.decoded
        share.seconds += seconds - stats.seconds
        stats.iterations, stats.slot_iterations = int(counters.iterations), int(counters.slot_iterations)
        stats.decoded = int(counters.decoded)
        stats.saved, stats.restored = int(counters.saved), int(counters.restored)
        stats.seconds = seconds

    def _min_busy(self, owner: np.ndarray, queue) -> int:
        """When the device loop should come back: as soon as a slot is freed while work is queued;
        in the drain, once few enough slots are held for `_narrowed` to narrow the batch; else
        when every slot is idle."""
        if queue:
            return int(np.sum(owner >= 0))
        if not self.narrow:
            return 1
        half = len(owner) // 2
        return 1 + max((held for held in range(half + 1) if self._narrower_width(held) <= half), default=0)

    def _narrower_width(self, busy: int) -> int:
        """The width for `busy` chains in the drain: a power of two (few programs compile), split
        evenly over the mesh."""
        return parallel.data_parallel_width(max(self.min_width, 1 << max(0, busy - 1).bit_length()), self.mesh)

    def _narrowed(self, slots, owner: np.ndarray, seen: np.ndarray):
        """In the drain, the held slots moved into a batch of `_narrower_width` slots, when that is
        at most half the present width."""
        live = list(np.flatnonzero(owner >= 0))
        width = self._narrower_width(len(live))
        if not self.narrow or not live or width > len(owner) // 2:
            return slots, owner, seen
        keep = live + list(np.flatnonzero(owner < 0))[: width - len(live)]
        slots = narrowed(slots, jnp.asarray(keep))
        if self.mesh is not None:
            slots = parallel.shard_slots(slots, self.mesh, width)
        return slots, owner[keep], seen[keep]

    def _fill(self, slots, owner: np.ndarray, chains: dict, charged: dict, numbers, queue: collections.deque):
        """Admit queued items into the free slots, each chain with a new number and no time charged."""
        free = list(np.flatnonzero(owner < 0))[: len(queue)]
        if not free:
            return slots
        admitted = [queue.popleft() for _ in free]
        for slot, item in zip(free, admitted):
            owner[slot] = number = next(numbers)
            chains[number], charged[number] = item, 0.0
        return self._admit(slots, free, admitted, owner[free])

    def _collect(self, slots, finished: list[int], items: list[WorkItem], seconds) -> list[ChainResult]:
        """The records of the chains in the slots `finished`, copied to the host."""
        if not finished:
            return []
        index = jnp.asarray(finished)
        steps, draws, stats, initial = jax.device_get((
            jax.tree.map(lambda a: a[index], slots.steps), jax.tree.map(lambda a: a[index], slots.draws),
            device.draw_statistics(jax.tree.map(lambda a: a[index], slots.draws)), slots.initial_generated[index]))
        return [ChainResult(item, {name: values[row] for name, values in steps._asdict().items()},
                            draws.tokens[row], draws.entropy[row], {name: values[row] for name, values in stats.items()},
                            {name: getattr(draws, name)[row] for name in device.LAST_STEP_FIELDS}, int(initial[row]),
                            float(seconds[row]))
                for row, item in enumerate(items)]

    def _admit(self, slots, free: list[int], items: list[WorkItem], numbers: np.ndarray):
        """Prefill `items` into the slots `free` as the chains `numbers`, ADMISSION_ROWS at a time."""
        for first in range(0, len(free), ADMISSION_ROWS):
            group = slice(first, first + ADMISSION_ROWS)
            slots = self._admit_group(slots, free[group], items[group], numbers[group])
        return slots

    def _admit_group(self, slots, free: list[int], items: list[WorkItem], numbers: np.ndarray):
        """`_admit` of at most ADMISSION_ROWS items, in a batch padded to a power of two (few shapes)."""
        rows = min(self.width, 1 << (len(free) - 1).bit_length())
        index = np.full(rows, self.width, np.int32)  # padding rows point past the slots: dropped
        owner = np.full(rows, -1, np.int32)
        owner[: len(free)] = numbers
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
                      jnp.asarray(keys), jnp.asarray(owner), None if starts is None else jnp.asarray(starts),
                      jnp.full(rows, self.schedule.num_draws, jnp.int32), self.schedule)


# Compiled once per (schedule, shapes; for `_advance`, its span). Slots are donated:
# the device updates them in place.
_empty = jax.jit(device.empty_slots, static_argnums=(1, 2, 3))
_admit = jax.jit(device.admit, static_argnums=(9,), donate_argnums=(0,))
_advance = jax.jit(device.advance, static_argnums=(4, 5), donate_argnums=(0,))
_release = jax.jit(device.release, donate_argnums=(0,))
_narrowed = jax.jit(device.narrowed)  # a gather into new, narrower buffers: nothing to donate
_rows = jax.jit(lambda array, keep: array[keep])


def narrowed(slots, keep):
    """`device.narrowed`, the two caches one array (a layer's keys or values) at a time, each wide
    array deleted once its rows are copied: the drain then holds the wide caches and one narrowed
    array at once, where one program over every array would hold a second pair of caches half as
    wide beside the first (`memory.plan` counts neither)."""
    def moved(array):
        rows = _rows(array, keep)
        array.delete()  # freed once the copy, already dispatched, has read it
        return rows

    caches = jax.tree.map(moved, (slots.cache, slots.backup))
    return _narrowed(slots._replace(cache=None, backup=None), keep)._replace(cache=caches[0], backup=caches[1])
