"""`eval --ray`: an evaluation's work queued to Ray actors on many hosts (DESIGN section 8).

The driver owns the record store and is its only writer. It splits the missing work into units
(sampler, seed, a chunk of problems), and an actor per accelerator (or per CPU) loads the model
once and runs the units it is given with the same code as a single process (`run_unit`). A unit's
records reach the store when the whole unit is back, so a worker that dies mid-unit leaves
nothing behind; its unit goes to another worker. Randomness is keyed by work, so the store equals
the store of a single-process run of the same command, whichever worker ran what.

Ray is an optional extra (`pip install "ppl-ecmh[ray]"`), imported only here.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Callable, Sequence

from tqdm.auto import tqdm

from ppl_ecmh.errors import PplEcmhError
from ppl_ecmh.evaluation import experiment
from ppl_ecmh.evaluation.settings import EvalSettings
from ppl_ecmh.evaluation.store import RecordStore, write_settings
from ppl_ecmh.registry import ENGINE, get_sampler
from ppl_ecmh.runner import DEFAULT_WIDTH

MAX_ATTEMPTS = 3  # a unit whose workers died this many times stops the run
CONNECT_TIMEOUT_S = 10


@dataclasses.dataclass(frozen=True)
class Unit:
    """The work one actor does in one call: a sampler and seed on a chunk of problems."""

    sampler: str
    seed: int
    problem_ids: tuple[str, ...]


def plan_units(settings: EvalSettings, work) -> list[Unit]:
    """Units of the pending `work` (`experiment.pending_work`): engine samplers in chunks of
    `batch_size` problems (one chunk fills a worker's slots); lockstep samplers in the batches a
    single process runs (their records do not depend on the batch, but a batch fills its rows)."""
    units = []
    for spec, seed, pending in work:
        size = (settings.batch_size or DEFAULT_WIDTH) if spec.sampler.runs_on == ENGINE else \
            settings.problems_per_batch(spec.name)
        units += [Unit(spec.name, seed, tuple(pending[i : i + size])) for i in range(0, len(pending), size)]
    return units


class Worker:
    """One model on one accelerator (or CPU group): runs units, returns their records."""

    def __init__(self, settings: EvalSettings):
        self.settings = settings
        task = experiment.get_task(settings.task)
        self.prepared = experiment.prepare(settings, task, experiment.select_problems(task, settings))

    def ready(self) -> int:
        return os.getpid()

    def run(self, unit: Unit, bon_budget: int | None) -> list[dict]:
        spec = dataclasses.replace(self.settings.spec(unit.sampler), bon_budget=bon_budget)
        kept = _Kept()
        experiment.run_unit(self.prepared, spec, unit.seed, unit.problem_ids, kept, tqdm(disable=True))
        return kept.records


class _Kept:
    """Where a worker's records go until its unit is done: a store's `append`, in memory."""

    def __init__(self):
        self.records = []

    def append(self, records: list[dict]) -> None:
        self.records.extend(records)


def import_ray():
    try:
        import ray
    except ImportError:
        raise PplEcmhError('--ray needs Ray: pip install "ppl-ecmh[ray]"') from None
    return ray


def connect(address: str | None):
    """Ray, connected: a local instance for None, else `auto` or host:port of a running cluster."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address and address != "auto":  # Ray itself retries an unreachable head for minutes
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as error:
            raise PplEcmhError(f"--ray {address}: cannot connect ({error or 'expected host:port'})") from None
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PplEcmhError(f"--ray {address}: cannot connect ({first})") from None
    return ray


def run_eval_on_ray(settings: EvalSettings, samplers: Sequence[str], seeds: Sequence[int], out_dir, *,
                    address: str | None = None, workers: int | None = None, cpus_per_worker: int = 1,
                    progress: bool = True, repair: bool = False,
                    on_dispatch: Callable[[object, Unit], None] | None = None) -> RecordStore:
    """`run_eval` with the work on Ray actors: `workers` of them (default: one per GPU of the
    cluster, else one per `cpus_per_worker` CPUs). `on_dispatch(actor, unit)` is called as each
    unit is handed out (monitoring; the tests kill an actor there)."""
    with experiment.opened(settings, samplers, seeds, out_dir, repair) as (_, _, out, store, work):
        if work:
            _Driver(connect(address), settings, store, out, workers, cpus_per_worker, on_dispatch).run(work, progress)
    return store


class _Driver:
    """Hands units to idle actors, writes each finished unit's records, replaces dead actors."""

    def __init__(self, ray, settings, store, out, workers, cpus_per_worker, on_dispatch):
        self.ray, self.settings, self.store, self.out, self.on_dispatch = ray, settings, store, out, on_dispatch
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.count = workers or gpus or max(1, cpus // cpus_per_worker)
        self.remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=cpus_per_worker, max_restarts=0)(Worker)

    def start(self):
        actor = self.remote.remote(self.settings)
        return actor, actor.ready.remote()

    def run(self, work, progress: bool) -> None:
        ray = self.ray
        starting = dict(self.start() for _ in range(self.count))  # actor -> its ready future
        idle, running, attempts = [], {}, {}
        later = [(spec, seed, pending) for spec, seed, pending in work if spec.sampler.budgeted]
        queue = plan_units(self.settings, [w for w in work if not w[0].sampler.budgeted])
        total = sum(len(pending) for _, _, pending in work)
        bar = tqdm(total=total, unit="problem", disable=not progress, desc=f"ray: {self.count} workers")
        settings_written = False
        while queue or running or later:
            if not queue and not running and later:  # best-of-n matches the budgets the MH records give
                queue, later = plan_units(self.settings, later), []
            while idle and queue:
                actor, unit = idle.pop(), queue.pop(0)
                budget = experiment.with_budget(self.settings.spec(unit.sampler), self.store.read(), unit.seed).bon_budget \
                    if get_sampler(unit.sampler).budgeted else None
                running[actor.run.remote(unit, budget)] = (actor, unit)
                if self.on_dispatch is not None:
                    self.on_dispatch(actor, unit)
            futures = list(starting.values()) + list(running)
            if not futures:
                raise PplEcmhError("ray: no worker could start")
            (future,), _ = ray.wait(futures, num_returns=1)
            if future in running:
                actor, unit = running.pop(future)
                try:
                    records = ray.get(future)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as error:
                    attempts[unit] = attempts.get(unit, 0) + 1
                    if attempts[unit] >= MAX_ATTEMPTS:
                        raise PplEcmhError(f"ray: unit {unit} lost its worker {MAX_ATTEMPTS} times: {error}") from None
                    bar.write(f"ray: a worker died during {unit.sampler} seed {unit.seed} "
                              f"({len(unit.problem_ids)} problems); retrying the unit on another")
                    queue.insert(0, unit)
                    new, ready = self.start()
                    starting[new] = ready
                    continue
                self.store.append(records)
                bar.update(len(records))
                idle.append(actor)
            else:
                actor = next(a for a, f in starting.items() if f == future)
                del starting[actor]
                try:
                    ray.get(future)
                except ray.exceptions.RayError as error:
                    raise PplEcmhError(f"ray: a worker failed to start: {_last_line(error)}") from None
                if not settings_written:  # the model loaded and every prompt fits: the settings hold
                    write_settings(self.out, self.settings)
                    settings_written = True
                idle.append(actor)
        bar.close()
        for actor in idle:
            ray.kill(actor)


def _last_line(error) -> str:
    """A Ray error's last line: the worker's own exception, after Ray's traceback."""
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__
