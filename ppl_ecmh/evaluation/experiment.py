"""Evaluation runs: every sampler on every problem of a task, for several seeds, graded, stored.

`batch_size` is the number of rows decoded side by side. The engine samplers
(`Sampler.runs_on` in `ppl_ecmh.registry`) queue one chain per pending problem into that many slots of the
continuous-batching engine; each record is graded and appended to DIR/records.jsonl as soon as its
chain is done, while the other slots decode. Their randomness is keyed by (seed, sampler, problem
id), so a record does not depend on the slot count, the order of the problems or on a resume.
Power-SMC and TMC go through the model in batches of as many problems as fit that many
rows (`EvalSettings.problems_per_batch`; the last batch padded with repeats, so every batch reuses
one compiled program) and append a batch's records after it; their randomness is keyed by (seed,
sampler, problem id) too, so a record is the same in any batch. A rerun with the same settings skips every
(sampler, seed, problem) already there, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ppl_ecmh import parallel
from ppl_ecmh.errors import PplEcmhError
from ppl_ecmh.evaluation.settings import EvalSettings
from ppl_ecmh.evaluation.store import (EVAL_FIELDS, RECORDS, RecordStore, check_settings, locked, results_directory,
                                       stored_settings, write_settings)
from ppl_ecmh.engine import Engine
from ppl_ecmh.lm.truncation import truncate
from ppl_ecmh.registry import BUDGET_SOURCES, ENGINE, SAMPLERS, SamplerSpec
from ppl_ecmh.runner import engine_items, fitted_width, run_sampler
from ppl_ecmh.tasks import get_task

def run_eval(settings: EvalSettings, samplers: Sequence[str], seeds: Sequence[int], out_dir, *,
             progress: bool = True, model=None, repair: bool = False, mesh=None) -> RecordStore:
    """Run what is missing from `out_dir` and return its store. `model` (a LoadedModel) skips
    loading `settings.model`, for callers that hold one already. `repair` first moves damaged
    lines of the store to its quarantine file. The directory is locked for the run, and its
    settings are recorded only once the model has loaded and every prompt fits. `mesh` splits the
    engine's slots and the weights over devices (`ppl_ecmh.parallel`); records do not depend on it."""
    with opened(settings, samplers, seeds, out_dir, repair) as (task, problems, out, store, work):
        if work:
            _run_missing(settings, work, task, problems, out, store, progress, model, mesh)
    return store


@contextlib.contextmanager
def opened(settings: EvalSettings, samplers: Sequence[str], seeds: Sequence[int], out_dir, repair: bool):
    """What every driver of an evaluation does first: check the samplers' options, select the
    problems, lock `out_dir` (repairing its store if asked) and plan the work its store lacks.
    Yields (task, problems, out, store, work), work empty when nothing is missing (the settings
    are then recorded, if they were not)."""
    specs = [settings.spec(name) for name in samplers]
    for spec in specs:  # bad sampler options fail before the model loads
        dataclasses.replace(spec, bon_budget=spec.bon_budget or 1).make_kernel()
    task = get_task(settings.task)
    problems = select_problems(task, settings)
    out = results_directory(out_dir)
    check_settings(out, settings)
    with locked(out):
        store = RecordStore(out / RECORDS, value_fields=EVAL_FIELDS)
        if repair and (moved := store.repair()):
            print(f"moved {moved} damaged line(s) of {store.path} to {store.quarantine_path}", file=sys.stderr)
        work = pending_work(specs, seeds, problems, store.done())
        if not any(pending for _, _, pending in work):
            if stored_settings(out) is None:
                write_settings(out, settings)
            work = []
        yield task, problems, out, store, work


@dataclasses.dataclass
class Prepared:
    """What running any unit of an evaluation needs: the model, the task and every prompt."""

    settings: EvalSettings
    task: Any
    problems: dict  # id -> problem
    model: Any
    prompts: dict  # id -> token ids
    prompt_block: int  # the longest prompt of all problems: equal shapes whatever unit runs
    machine: str
    mesh: Any = None


def prepare(settings: EvalSettings, task, problems: list, model=None, mesh=None) -> Prepared:
    """Load the model (unless given), encode every problem's prompt and check they fit."""
    if model is None:
        from ppl_ecmh.lm import load_model

        model = load_model(settings.model, dtype=settings.dtype)
    prompts = {p.id: model.encode(task.prompt(p, chat=settings.chat), chat=settings.chat) for p in problems}
    prompt_block = max(len(tokens) for tokens in prompts.values())
    model.fit_context(prompt_block, settings.max_new_tokens, settings.stretch_context)
    most_draws = max(settings.num_draws(name) for name in SAMPLERS)  # whichever samplers the units run
    settings = dataclasses.replace(settings, batch_size=fitted_width(
        model.lm, prompt_block, settings.max_new_tokens, settings.batch_size, mesh, num_draws=most_draws))
    return Prepared(settings, task, {p.id: p for p in problems}, model, prompts, prompt_block, machine_label(), mesh)


def run_unit(prepared: Prepared, spec: SamplerSpec, seed: int, problem_ids: Sequence[str], sink, bar) -> None:
    """Records of `spec` and `seed` on the problems `problem_ids`, handed to `sink.append(records)`
    as they are done: per chain on the engine, per batch in lockstep (batches of
    `problems_per_batch`)."""
    pending = [prepared.problems[i] for i in problem_ids]
    settings, p = prepared.settings, prepared
    bar.set_description(f"{spec.name} seed {seed}")
    if spec.sampler.runs_on == ENGINE:
        _run_on_engine(settings, spec, seed, pending, p.prompts, p.prompt_block, p.model, p.task, p.machine, sink, bar,
                       p.mesh)
        return
    correct, per_batch = 0, settings.problems_per_batch(spec.name)
    for start in range(0, len(pending), per_batch):
        batch = pending[start : start + per_batch]
        records = _run_batch(settings, spec, seed, batch, p.prompts, p.prompt_block, p.model, p.task, p.machine)
        sink.append(records)
        correct += sum(record["correct"] for record in records)
        bar.update(len(batch))
        bar.set_postfix(correct=f"{correct}/{start + len(batch)}")


def pending_work(specs, seeds, problems, done) -> list[tuple[SamplerSpec, int, list[str]]]:
    """(spec, seed, ids of the problems without a record) for every sampler and seed, in order."""
    return [(spec, seed, [p.id for p in problems if (spec.name, seed, p.id) not in done]) for spec in specs for seed in seeds]


def with_budget(spec: SamplerSpec, records: list[dict], seed: int) -> SamplerSpec:
    """A budgeted sampler (best-of-N) without a budget takes the one its MH records give (`matched_budget`)."""
    if spec.sampler.budgeted and spec.bon_budget is None:
        return dataclasses.replace(spec, bon_budget=matched_budget(records, seed))
    return spec


def _run_missing(settings, work, task, problems, out, store, progress, model, mesh) -> None:
    prepared = prepare(settings, task, problems, model, mesh)
    write_settings(out, prepared.settings, getattr(prepared.model.lm, "rope_scaling", None))  # the width it chose
    bar = tqdm(total=sum(len(pending) for _, _, pending in work), unit="problem", disable=not progress)
    for spec, seed, pending in work:
        if pending:
            run_unit(prepared, with_budget(spec, store.read(), seed), seed, pending, store, bar)
    bar.close()


def matched_budget(records: list[dict], seed: int) -> int:
    """Best-of-N's budget per problem: the mean tokens per problem of the first MH sampler in
    BUDGET_SOURCES with records for `seed` (so list best-of-n after the sampler it matches)."""
    for sampler in BUDGET_SOURCES:
        tokens = [r["tokens_generated"] for r in records if r["sampler"] == sampler and r["seed"] == seed]
        if tokens:
            return max(1, round(sum(tokens) / len(tokens)))
    raise PplEcmhError(f"best-of-n: no records of {', '.join(BUDGET_SOURCES)} for seed {seed} to match its "
                       "budget to; list best-of-n after one of them, or give --bon-budget")


def machine_label() -> str:
    """What wall times are measured on: CPU model, cores, JAX device, host and boot. Every record
    carries it, so a summary can tell when a sampler's wall time mixes machines (a run resumed
    elsewhere). A reboot counts as another machine: the hardware behind a VM can change with it."""
    models = [line.split(":", 1)[1].strip() for line in _text_or_empty("/proc/cpuinfo").splitlines()
              if line.startswith("model name")]
    cpu = models[0] if models else platform.processor() or platform.machine()
    boot = _text_or_empty("/proc/sys/kernel/random/boot_id").strip()[:8] or "unknown"
    return f"{cpu}, {os.cpu_count()} cores, {jax.devices()[0].device_kind}, host {platform.node()}, boot {boot}"


def _text_or_empty(path: str) -> str:
    """A /proc file's text, or "" where there is no /proc (macOS, Windows)."""
    return Path(path).read_text() if Path(path).is_file() else ""


def select_problems(task, settings: EvalSettings) -> list:
    """The task's problems that match `settings.where` and are among `settings.problems`, the
    first `settings.limit` of them."""
    problems = task.load(settings.source)
    for key, value in (settings.where or {}).items():
        problems = [p for p in problems if str(p.metadata.get(key)) == str(value)]
    if settings.problems is not None:
        missing = sorted(set(settings.problems) - {p.id for p in problems})
        if missing:
            raise PplEcmhError(f"task {settings.task} has no problem {', '.join(missing)} in "
                               f"{settings.source or task.default_source}" + (f" matching {settings.where}"
                                                                              if settings.where else ""))
        problems = [p for p in problems if p.id in set(settings.problems)]
    if not problems:
        raise PplEcmhError(f"task {settings.task} has no problems in {settings.source or task.default_source}"
                           + (f" matching {settings.where}" if settings.where else ""))
    if settings.shuffle_seed is not None:
        order = np.random.default_rng(settings.shuffle_seed).permutation(len(problems))
        problems = [problems[i] for i in order]
    return problems[: settings.limit]


def _run_batch(settings, spec, seed, batch, prompts, prompt_block, model, task, machine) -> list[dict]:
    per_batch = settings.problems_per_batch(spec.name)
    padded = batch + [batch[-1]] * (per_batch - len(batch))  # equal shapes: one compiled program
    started = time.perf_counter()
    run = run_sampler(model.lm, [prompts[p.id] for p in padded], spec, alpha=settings.alpha,
                      max_new_tokens=settings.max_new_tokens, num_chains=1, num_draws=settings.num_draws(spec.name),
                      seed=_crc(f"{seed}/{spec.name}"), prompt_block=prompt_block, progress=False,
                      work_ids=[_crc(p.id) for p in padded])
    seconds = time.perf_counter() - started
    return [record(settings, spec, seed, problem, model, task, machine, run.tokens[0, -1, column],
                   {name: values[0, :, column] for name, values in run.stats.items()}, run.initial_generated[0, column],
                   wall_time_s=seconds / per_batch, batch_wall_time_s=seconds, batch_size=len(batch))
            for column, problem in enumerate(batch)]


def _run_on_engine(settings, spec, seed, pending, prompts, prompt_block, model, task, machine, store, bar,
                   mesh=None) -> None:
    """One chain per pending problem through the engine; each record stored as its chain ends."""
    schedule = spec.schedule(settings.alpha, settings.max_new_tokens, settings.num_draws(spec.name))
    items = engine_items([prompts[p.id] for p in pending], jax.random.PRNGKey(_crc(f"{seed}/{spec.name}")), 1,
                         [_crc(p.id) for p in pending])
    engine = Engine(truncate(model.lm, spec.top_k), schedule, prompt_block=prompt_block, mesh=mesh,
                    width=parallel.data_parallel_width(min(settings.batch_size, len(items)), mesh))
    correct = 0
    for done, result in enumerate(engine.run(items), 1):
        done_record = record(settings, spec, seed, pending[result.item.tag[0]], model, task, machine, result.tokens[-1],
                             result.stats, result.initial_generated, wall_time_s=result.seconds,
                             batch_wall_time_s=None, batch_size=engine.width,
                             engine=dict(width=engine.width, occupancy=round(engine.stats.occupancy, 4)))
        store.append([done_record])
        correct += done_record["correct"]
        bar.update(1)
        bar.set_postfix(correct=f"{correct}/{done}", occupancy=f"{engine.stats.occupancy:.2f}",
                        tok_s=f"{engine.stats.decoded / max(engine.stats.seconds, 1e-9):.0f}")


def record(settings, spec, seed, problem, model, task, machine, tokens, stats: dict, initial_generated,
           **timing) -> dict:
    """A problem's record from its chain's last draw `tokens` [T] and per-draw statistics
    (`engine.slots.STAT_FIELDS`, [draws]), graded; `timing`: how its wall time was measured."""
    length = int(stats["length"][-1])
    completion = model.decode(tokens[:length])
    return dict(
        sampler=spec.name, seed=seed, problem_id=problem.id, completion=completion, **grade(task, completion, problem),
        reference=problem.answer if settings.task != "humaneval" else None,
        tokens_generated=int(initial_generated) + int(stats["num_generated"].sum()), completion_length=length,
        alpha_log_p=float(stats["log_target"][-1]), acceptance=float(np.mean(stats["accepted"])),
        mh_suffix_tokens=int(stats["new_suffix_length"].sum()) if spec.sampler.mh else None,
        num_draws=len(stats["length"]), token_budget=spec.bon_budget, machine=machine, **timing)


def grade(task, completion: str, problem) -> dict:
    """A record's grade fields: the task's `Grade`, and `grading_error`, the reason when grading
    itself raised (then a fail): one completion that breaks its grader must not stop the
    evaluation (nor be retried forever on resume)."""
    try:
        graded = task.grade(completion, problem)
    except Exception as error:  # noqa: BLE001 - any grader failure is this record's failed grade
        return dict(answer=None, correct=False, execution=None, grading_error=f"{type(error).__name__}: {error}")
    return dict(answer=graded.answer, correct=bool(graded.correct), execution=graded.execution, grading_error=None)


def _crc(text: str) -> int:
    """A stable 31-bit number for a text: the run seed of (seed, sampler), and a problem's work id."""
    return zlib.crc32(text.encode()) % (2**31)
