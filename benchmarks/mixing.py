"""Does the entropy cut mix faster? Four single-stage suffix-MH kernels on the same real prompts,
compared the way MCMC studies compare samplers (the method: `ppl_ecmh.evaluation.mixing`).

qwen2.5-coder-0.5b on the first 16 problems of the accuracy study's seeded GSM8K and HumanEval
subsets (`benchmarks.study`), alpha 4, tau 1/alpha, T_max and steps in SETTINGS (chosen so that the
whole study costs under 2 hours of this 2-core CPU). For each prompt, 4 ancestral completions at
the proposal's temperature (`start_tau`) are the chains' starts, shared by every kernel (a paired
design); from them each kernel runs 4 chains of `mh_steps` MH steps on the engine, a draw after
each step. Starts at temperature 1 lie about 100 nats of alpha*log p below the target's typical set
and were still climbing after 32 steps (the study's first design), so such chains measure burn-in,
not mixing. The kernels differ only in where they cut: uniformly at random, in proportion to
exp(entropy) (beta 1), the published entropy jump, and the default mixture (10% uniform into the
entropy jump).

Per prompt and kernel, from each chain's draws: acceptance; where cuts fall (relative position,
entropy at the cut); bulk ESS and autocorrelation time of alpha*log p, of the completion length and
of the indicator of a correct final answer (the extracted number; the tests passing) over the last
`kept_draws` draws, and each per 1,000 tokens decoded for them; the steps and tokens until the
split R-hat of alpha*log p falls below 1.05; the distinct final answers visited per 1,000 tokens.
Across prompts, paired: each kernel against each other, the geometric-mean ratio of ESS per 1k
tokens with a bootstrap interval over prompts and a Wilcoxon signed-rank p; the same for tokens to
R-hat 1.05.

Resumable: every chain's record (no completion text) is appended to results/mixing/chains.jsonl,
the starts to results/mixing/starts.jsonl, and both are committed; a rerun runs only what is
missing. Records are keyed by work (seed, kernel, problem, chain), so a resumed study draws exactly
what an uninterrupted one would have.

    python -m benchmarks.mixing run [--tasks gsm8k,humaneval] [--kernels random,entropy,...]
    python -m benchmarks.mixing summarize       # results/mixing/summary.json, report.md, figures
    python -m benchmarks.mixing run --study long    # issue 59's real traces: T_max 192, in segments
    python -m benchmarks.mixing run --study long --segments 40   # the same chains, continued to 1,000 steps
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmarks.study import settings_for
from ppl_ecmh.analysis import diagnostics
from ppl_ecmh.engine import Engine, Schedule, WorkItem, chain_key
from ppl_ecmh.evaluation import mixing
from ppl_ecmh.evaluation.experiment import grade, machine_label, select_problems
from ppl_ecmh.evaluation.store import RecordStore, replace_atomically
from ppl_ecmh.lm.registry import EMBEDDED_MODELS
from ppl_ecmh.samplers.cuts import Entropy, EntropyJump, Mixture, Uniform
from ppl_ecmh.tasks import get_task

SETTINGS = dict(model="qwen2.5-coder-0.5b", alpha=4.0, tau=0.25, start_tau=0.25, max_new_tokens=32, mh_steps=32,
                kept_draws=20, chains=4, prompts=16, seed=0, width=64)
# A few minutes on the small model, to try the whole pipeline: `run --study pilot`, `summarize --study pilot`.
PILOT = SETTINGS | dict(model="smollm2-135m", max_new_tokens=32, mh_steps=12, kept_draws=10, chains=2, prompts=2,
                        width=8)
# Issue 59's real traces: long enough to hold decisions (docs/decision-points.md). The pilot sizes
# the study from its autocorrelation times; smollm2-135m decodes about 3x faster than qwen2.5-coder.
LONG_PILOT = SETTINGS | dict(model="smollm2-135m", max_new_tokens=192, mh_steps=40, kept_draws=20, prompts=2, width=24,
                             tasks=["gsm8k"], kernels=["random", "entropy_jump", "mixture"])
# The study itself, sized from the pilot (results/decision-points/README.md): about 4 CPU-hours,
# recorded in segments of 25 steps so that it is committed as it runs and resumes between sessions.
LONG = LONG_PILOT | dict(prompts=8, mh_steps=300, kept_draws=200, segments=12, width=96)
STUDIES = {"short": (SETTINGS, Path("results/mixing")), "pilot": (PILOT, Path("runs/mixing-pilot")),
           "long-pilot": (LONG_PILOT, Path("results/decision-points/real-pilot")),
           "long": (LONG, Path("results/decision-points/real"))}
TASKS = ("gsm8k", "humaneval")
# The kernels, the baseline first: the random cut of Karan & Du, then the entropy cuts.
KERNELS = {"random": Uniform(), "entropy": Entropy(beta=1.0), "entropy_jump": EntropyJump(power=4.0),
           "mixture": Mixture()}
FUNCTIONALS = ("log_target", "length", "correct")  # alpha*log p, completion length, a correct final answer
RESULTS = STUDIES["short"][1]
JUMP_FLOOR = 0.5  # nats: the entropy jumps a chain's record keeps (of its last draw), to describe the traces
JUMP_THRESHOLDS = (0.5, 1.0, 2.0)
TRACED_PROMPTS = 8  # prompts whose chains figures/traces.png draws
REPLACED_BINS = (0, 16, 32, 64, 128, 4096)  # tokens a proposal replaced, for acceptance_table
CHAINS, STARTS = "chains.jsonl", "starts.jsonl"
CHAIN_KEY = ("task", "kernel", "problem_id", "chain")
START_KEY = ("task", "problem_id", "chain")
PACKAGES = ["ppl-ecmh", "jax", "arviz", "scipy", "numpy"]


class Study:
    """One task's problems, prompts and model, and the stores the study appends to."""

    def __init__(self, task_name: str, model, settings: dict, results: Path = RESULTS):
        self.task_name, self.model, self.settings = task_name, model, settings
        self.task = get_task(task_name)
        self.problems = select_problems(self.task, settings_for(task_name, settings["prompts"]))
        self.prompts = {p.id: model.encode(self.task.prompt(p, chat=True), chat=True) for p in self.problems}
        self.prompt_block = max(len(tokens) for tokens in self.prompts.values())
        model.fit_context(self.prompt_block, settings["max_new_tokens"])
        self.segments = settings.get("segments", 1)  # a long study records each chain in segments
        self.chains = RecordStore(results / CHAINS, CHAIN_KEY + (("segment",) if self.segments > 1 else ()))
        self.starts = RecordStore(results / STARTS, START_KEY)
        self.graded: dict = {}  # (problem id, completion) -> (answer, correct): chains revisit states

    def work(self, name: str, segment: int | None = None) -> list[tuple]:
        """(problem, chain) pairs of this task not yet done by `name` ("start" or a kernel), in
        `segment` for a study in segments (only those whose segment before it is done)."""
        store, prefix = (self.starts, (self.task_name,)) if name == "start" else (self.chains, (self.task_name, name))
        done = store.done()
        key = lambda problem, chain, part: prefix + (problem.id, chain) + (() if segment is None else (part,))
        return [(problem, chain) for problem in self.problems for chain in range(self.settings["chains"])
                if key(problem, chain, segment) not in done and (not segment or key(problem, chain, segment - 1) in done)]

    def run_starts(self) -> None:
        """Ancestral completions (at `start_tau`) for the chains that have none yet."""
        pending = self.work("start")
        schedule = Schedule.independent(self.settings["max_new_tokens"], alpha=self.settings["alpha"],
                                        tau=self.settings["start_tau"])
        for result in self._engine_run(pending, schedule, "ancestral", starts=None, description="starts"):
            problem, chain = result.item.tag
            length = int(result.length[-1])
            self.starts.append([dict(task=self.task_name, problem_id=problem.id, chain=chain,
                                     tokens=result.tokens[-1, :length].tolist(),
                                     log_target=round(float(result.log_target[-1]), 4))])

    def run_kernel(self, kernel: str, segment: int = 0) -> None:
        """The chains of `kernel` not yet recorded, each from its start. A study in segments runs
        `segment` of every chain from the last draw of its segment before, with a key of its own,
        and records it as it ends: the same Markov chain, committed as it runs."""
        settings = self.settings
        schedule = Schedule.suffix_mh(settings["max_new_tokens"], settings["mh_steps"] // self.segments,
                                      cut=KERNELS[kernel], alpha=settings["alpha"], tau=settings["tau"])
        if segment:
            starts = {(r["problem_id"], r["chain"]): r["last_tokens"] for r in self.chains.read()
                      if (r["task"], r["kernel"], r["segment"]) == (self.task_name, kernel, segment - 1)}
        else:
            starts = {(r["problem_id"], r["chain"]): r["tokens"] for r in self.starts.read() if r["task"] == self.task_name}
        name = f"{kernel}@{segment}" if segment else kernel
        pending = self.work(kernel, segment if self.segments > 1 else None)
        machine = machine_label()
        for result in self._engine_run(pending, schedule, name, starts, description=name):
            problem, chain = result.item.tag
            record = self.chain_record(kernel, problem, chain, len(starts[problem.id, chain]), result, schedule)
            if self.segments > 1:
                record |= dict(segment=segment, last_tokens=result.tokens[-1, : int(result.length[-1])].tolist())
            self.chains.append([record | dict(machine=machine)])

    def _engine_run(self, pending, schedule, name, starts, description):
        items = [WorkItem(self.prompts[problem.id], chain_key(self.settings["seed"], f"mixing-{name}", problem.id, chain),
                          (problem, chain), None if starts is None else starts[problem.id, chain])
                 for problem, chain in pending]
        if not items:
            return
        engine = Engine(self.model.lm, schedule, width=min(self.settings["width"], len(items)),
                        prompt_block=self.prompt_block)
        bar = tqdm(total=len(items), desc=f"{self.task_name} {description}", unit="chain")
        report = lambda stats: bar.set_postfix(tok_s=f"{stats.decoded / max(stats.seconds, 1e-9):.0f}",
                                               occupancy=f"{stats.occupancy:.2f}")
        for result in engine.run(items, progress=report):
            yield result
            bar.update(1)
        bar.close()

    def chain_record(self, kernel: str, problem, chain: int, start_length: int, result, schedule: Schedule) -> dict:
        """One chain's record: per MH step its move, per draw its functionals (no completion text)."""
        moves = np.asarray([step for step in range(schedule.num_steps) if not schedule.is_extension(step)])
        steps = {name: np.asarray(values)[moves] for name, values in result.steps.items()}
        lengths = result.length.astype(int)
        # the cut of step s chose among the positions of the draw before it (the start, for the first)
        before = np.concatenate([[start_length], lengths[:-1]])
        entropy_at_cut = [None] + [round(float(result.entropy[draw - 1, cut]), 4) if cut < before[draw] else None
                                   for draw, cut in enumerate(steps["cut"][1:], 1)]
        answers = [self.answer(problem, result.tokens[draw, :length]) for draw, length in enumerate(lengths)]
        return dict(
            task=self.task_name, kernel=kernel, problem_id=problem.id, chain=chain, seed=self.settings["seed"],
            start_length=start_length, log_target=np.round(result.log_target.astype(float), 4).tolist(), length=lengths.tolist(),
            answer=[answer for answer, _ in answers], correct=[bool(correct) for _, correct in answers],
            accepted=steps["accepted"].astype(bool).tolist(), accept_prob=np.round(steps["accept_prob"].astype(float), 4).tolist(),
            cut=steps["cut"].astype(int).tolist(), length_before=before.tolist(), entropy_at_cut=entropy_at_cut,
            new_suffix_length=steps["new_suffix_length"].astype(int).tolist(), wall_time_s=round(result.seconds, 2),
            entropy_jumps=entropy_jumps(result.entropy[-1, : lengths[-1]]),
        )

    def answer(self, problem, tokens) -> tuple[str | None, bool]:
        """The final answer of a completion and whether it is correct. For code the answer is a
        short hash of the extracted program (distinct programs are distinct answers)."""
        completion = self.model.decode(tokens)
        key = (problem.id, completion)
        if key not in self.graded:
            graded = grade(self.task, completion, problem)
            answer = graded["answer"]
            if self.task_name == "humaneval" and answer is not None:
                answer = hashlib.sha1(answer.encode()).hexdigest()[:12]
            self.graded[key] = (answer, graded["correct"])
        return self.graded[key]


def entropy_jumps(entropy: np.ndarray) -> list[list[float]]:
    """[relative position, size] of every rise of the next-token entropy of at least JUMP_FLOOR
    nats from one position to the next (the first position rises from 0, as the jump cut counts)."""
    rises = np.diff(np.concatenate([[0.0], np.asarray(entropy, float)]))
    return [[round(t / max(1, len(entropy)), 4), round(float(rises[t]), 3)] for t in np.flatnonzero(rises >= JUMP_FLOOR)]


def trace_table(records: list[dict]) -> list[dict]:
    """Per task and kernel, what the last draws look like: entropy jumps per completion above each
    threshold, and where the largest jump sits (relative position), to set beside the synthetic
    family's knobs (docs/decision-points.md)."""
    groups: dict = {}
    for record in records:
        if "entropy_jumps" in record:
            groups.setdefault((record["task"], record["kernel"]), []).append(record["entropy_jumps"])
    rows = []
    for (task, kernel), jumps in sorted(groups.items()):
        row = dict(task=task, kernel=kernel, completions=len(jumps))
        for threshold in JUMP_THRESHOLDS:
            row[f"jumps_over_{threshold:g}"] = float(np.mean([sum(size >= threshold for _, size in j) for j in jumps]))
        largest = [max(j, key=lambda jump: jump[1])[0] for j in jumps if j]
        row["largest_jump_position"] = float(np.median(largest)) if largest else None
        rows.append(row)
    return rows


def acceptance_table(records: list[dict]) -> list[dict]:
    """Per task and kernel, acceptance by how many tokens a step's proposal replaced (the current
    draw's length less the cut): whether a cut accepts less only because it cuts earlier."""
    rows = []
    for task, kernel in sorted({(r["task"], r["kernel"]) for r in records}):
        chains = [r for r in records if (r["task"], r["kernel"]) == (task, kernel)]
        replaced = np.concatenate([np.subtract(c["length_before"], c["cut"]) for c in chains])
        accepted = np.concatenate([np.asarray(c["accepted"], float) for c in chains])
        for label, low, high in replaced_bins():
            chosen = (replaced >= low) & (replaced < high)
            if chosen.any():
                rows.append(dict(task=task, kernel=kernel, replaced=label, steps=int(chosen.sum()),
                                 acceptance=float(accepted[chosen].mean())))
    return rows


def replaced_bins() -> list[tuple[str, int, int]]:
    """(label, low, high) of each bin of replaced tokens, low <= replaced < high."""
    return [(f"{low}-{high - 1}", low, high) for low, high in zip(REPLACED_BINS, REPLACED_BINS[1:])]


def run(args) -> None:
    from ppl_ecmh import load_model

    settings, results = STUDIES[args.study]
    settings = study_settings(settings, results, args.segments)
    model = load_model(settings["model"])
    for task in args.tasks or settings.get("tasks", TASKS):
        study = Study(task, model, settings, results)
        study.run_starts()
        for segment in range(study.segments):  # every cut's chains advance a segment before any goes further
            for kernel in args.kernels or settings.get("kernels", KERNELS):
                study.run_kernel(kernel, segment)


def study_settings(settings: dict, results: Path, segments: int | None = None) -> dict:
    """The settings the records beside them were drawn with, written there first if there are
    none. A study in segments may be extended: `segments` more than it has continues every chain
    with more segments of the same length, and a stored extension is kept. Records of any other
    settings are refused."""
    segmented = settings.get("segments", 1) > 1
    if segments is not None and not segmented:
        sys.exit("--segments: this study is not recorded in segments")
    path = results / "settings.json"
    stored = json.loads(path.read_text()) if path.exists() else None
    if stored is not None:
        comparable = _extended(stored, settings["segments"]) if segmented else stored
        if comparable != settings:
            changed = ", ".join(f"{k}: {comparable.get(k)} -> {settings.get(k)}"
                                for k in sorted(set(comparable) | set(settings)) if comparable.get(k) != settings.get(k))
            sys.exit(f"{path}: the records here were drawn with other settings ({changed}); "
                     "move them away to start a new study")
    if segmented:
        have = (stored or settings)["segments"]
        if segments is not None and segments < have:
            sys.exit(f"--segments: the study already has {have} segments")
        settings = _extended(settings, max(have, segments or 0))
    if settings != stored:
        results.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, json.dumps(settings, indent=2) + "\n")
    return settings


def _extended(settings: dict, segments: int) -> dict:
    """`settings` with `segments` segments of the same number of MH steps each."""
    per_segment = settings["mh_steps"] // settings.get("segments", 1)
    return settings | dict(segments=segments, mh_steps=per_segment * segments)


# Analysis ---------------------------------------------------------------------------------------

PER_STEP = ("log_target", "length", "answer", "correct", "accepted", "accept_prob", "cut", "length_before",
            "entropy_at_cut", "new_suffix_length")  # a chain record's per-step lists


def whole_chains(records: list[dict]) -> list[dict]:
    """Chains recorded in segments joined into one record each: the per-step lists of their
    segments in order, up to the fewest segments any chain of the same task has, so that every
    chain and cut is compared at the same steps (`segments` says how many). Records without
    segments pass through."""
    if not any("segment" in record for record in records):
        return records
    parts: dict = {}
    for record in records:
        parts.setdefault(record["task"], {}).setdefault((record["kernel"], record["problem_id"], record["chain"]),
                                                        {})[record["segment"]] = record
    chains = []
    for chain_parts in parts.values():
        common = min(_consecutive(segments) for segments in chain_parts.values())
        for segments in chain_parts.values():
            ordered = [segments[i] for i in range(common)]
            if not ordered:
                continue
            joined = {key: value for key, value in ordered[-1].items() if key not in ("segment", "last_tokens")}
            joined |= {key: [value for part in ordered for value in part[key]] for key in PER_STEP}
            joined |= dict(start_length=ordered[0]["start_length"], segments=common,
                           wall_time_s=round(sum(part["wall_time_s"] for part in ordered), 2))
            chains.append(joined)
    return chains


def _consecutive(segments: dict) -> int:
    """How many segments from the first are there without a gap."""
    count = 0
    while count in segments:
        count += 1
    return count


def target_table(records: list[dict], kept_draws: int) -> list[dict]:
    """One row per (task, problem, kernel) with at least 2 chains: the per-prompt figures."""
    groups: dict = {}
    for record in records:
        groups.setdefault((record["task"], record["problem_id"], record["kernel"]), []).append(record)
    rows = []
    for (task, problem_id, kernel), chains in sorted(groups.items()):
        if len(chains) < 2:
            continue
        chains = sorted(chains, key=lambda r: r["chain"])
        draws = {name: np.asarray([c[name] for c in chains], dtype=float) for name in FUNCTIONALS}
        decoded = np.asarray([c["new_suffix_length"] for c in chains], dtype=float)  # [chain, step]
        kept_tokens = decoded[:, -kept_draws:].sum()
        row = dict(task=task, problem_id=problem_id, kernel=kernel, chains=len(chains),
                   acceptance=float(np.mean([c["accepted"] for c in chains])),
                   relative_cut=float(np.mean([cut / max(1, before) for c in chains
                                               for cut, before in zip(c["cut"], c["length_before"])])),
                   entropy_at_cut=float(np.mean([h for c in chains for h in c["entropy_at_cut"] if h is not None])),
                   tokens=float(decoded.sum()), kept_tokens=float(kept_tokens))
        for name in FUNCTIONALS:
            result = mixing.efficiency(draws[name][:, -kept_draws:], kept_tokens)
            row |= {f"ess_{name}": result.ess.value, f"iat_{name}": result.iat,
                    f"ess_per_1k_{name}": result.ess_per_1k_tokens, f"why_{name}": result.ess.reason}
        steps = mixing.steps_to_rhat(draws["log_target"])
        row["steps_to_rhat"] = steps
        row["tokens_to_rhat"] = None if steps is None else float(decoded[:, :steps].sum())
        answers = {a for c in chains for a in c["answer"] if a is not None}
        row["distinct_answers_per_1k"] = 1000.0 * len(answers) / max(1.0, decoded.sum())
        row["answer_changes_per_1k"] = 1000.0 * answer_changes(chains, kept_draws) / max(1.0, kept_tokens)
        late = diagnostics.rhat(draws["log_target"][:, -kept_draws:])
        row["rhat_log_target"] = late.value if late.estimable else float("nan")
        rows.append(row)
    return rows


def answer_changes(chains: list[dict], kept_draws: int) -> int:
    """Steps among the last `kept_draws` whose final answer differs from the step before (no answer
    counts as an answer): how often the chains move between the modes that matter, whether or not
    they have mixed."""
    windows = [c["answer"][max(0, len(c["answer"]) - kept_draws - 1):] for c in chains]
    return sum(before != after for window in windows for before, after in zip(window, window[1:]))


def comparisons(rows: list[dict], kernels) -> list[dict]:
    """Every pair of kernels, paired over prompts: ESS per 1k tokens of each functional (higher is
    better), tokens to R-hat 1.05 (lower is better; never reached counts as not estimable), and
    answer changes per 1k tokens (movement between answers, which mixing needs but does not prove)."""
    out = []
    figures = [f"ess_per_1k_{name}" for name in FUNCTIONALS] + ["tokens_to_rhat", "answer_changes_per_1k"]
    for scope in ("all",) + TASKS:
        chosen = [row for row in rows if scope in ("all", row["task"])]
        for figure in figures:
            values = {kernel: {(row["task"], row["problem_id"]): np.nan if row[figure] is None else row[figure]
                               for row in chosen if row["kernel"] == kernel} for kernel in kernels}
            present = [kernel for kernel in kernels if values[kernel]]
            for result in mixing.all_pairs(values, figure, present):
                out.append(dict(scope=scope, **result._asdict()) | dict(
                    not_estimable={"/".join(target): why for target, why in result.not_estimable.items()}))
    return out


def coverage(rows: list[dict], kernels) -> list[dict]:
    """Per task and kernel: of its prompts, how many have an estimable ESS of alpha*log p and how
    many reached R-hat 1.05. The paired ratios leave such prompts out; this says how many, and
    which kernel left them."""
    out = []
    for task in TASKS:
        for kernel in kernels:
            chosen = [row for row in rows if (row["task"], row["kernel"]) == (task, kernel)]
            if chosen:
                out.append(dict(task=task, kernel=kernel, prompts=len(chosen),
                                ess_estimable=sum(bool(np.isfinite(row["ess_log_target"])) for row in chosen),
                                rhat_reached=sum(row["steps_to_rhat"] is not None for row in chosen)))
    return out


def summarize(args) -> None:
    results = STUDIES[args.study][1]
    settings = json.loads((results / "settings.json").read_text())
    segments = settings.get("segments", 1)
    records = whole_chains(RecordStore(results / CHAINS, CHAIN_KEY + (("segment",) if segments > 1 else ())).read())
    rows = target_table(records, settings["kept_draws"])
    kernels = [kernel for kernel in KERNELS if any(row["kernel"] == kernel for row in rows)]
    study = "" if args.study == "short" else f" --study {args.study}"
    result = dict(
        command=f"python -m benchmarks.mixing run{study}; python -m benchmarks.mixing summarize{study}",
        settings=settings, model_sha256=EMBEDDED_MODELS[settings["model"]].sha256,
        versions={name: importlib.metadata.version(name) for name in PACKAGES}, python=sys.version.split()[0],
        chains=len(records), wall_time_s=round(sum(r["wall_time_s"] for r in records), 1),
        chains_done={f"{task} {kernel}": sum(r["task"] == task and r["kernel"] == kernel
                                             and r.get("segments", 1) == segments for r in records)
                     for task in settings.get("tasks", TASKS) for kernel in settings.get("kernels", KERNELS)},
        chains_per_kernel_and_task=settings["prompts"] * settings["chains"],
        targets=_finite(rows), coverage=coverage(rows, kernels), comparisons=_finite(comparisons(rows, kernels)),
        traces=_finite(trace_table(records)), acceptance_by_replaced=acceptance_table(records),
    )
    result["status"] = status(result)
    replace_atomically(results / "summary.json", json.dumps(result, indent=2) + "\n")
    write_figures(records, rows, kernels, settings, results / "figures")
    (results / "report.md").write_text(report(result, kernels))
    print(f"{len(records)} chains, {len(rows)} (prompt, kernel) rows -> {results}/summary.json, report.md, figures/")


def _finite(value):
    """JSON without NaN: nan becomes null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_figures(records, rows, kernels, settings, out: Path) -> None:
    """ESS per 1k tokens per prompt and kernel; autocorrelation of alpha*log p; cut against entropy;
    the chains' alpha*log p traces, where a reader sees at once whether they met."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    targets = sorted({(row["task"], row["problem_id"]) for row in rows})
    finite = [row["ess_per_1k_log_target"] for row in rows if np.isfinite(row["ess_per_1k_log_target"])]
    floor = 0.5 * min(finite, default=1.0)  # where a not-estimable ESS is marked
    figure, axis = plt.subplots(figsize=(max(7, 0.3 * len(targets)), 4))
    for offset, kernel in enumerate(kernels):
        values = {(row["task"], row["problem_id"]): row["ess_per_1k_log_target"] for row in rows if row["kernel"] == kernel}
        x = np.arange(len(targets)) + 0.15 * (offset - (len(kernels) - 1) / 2)
        y = np.asarray([values.get(target, np.nan) for target in targets], dtype=float)
        dots = axis.scatter(x, y, label=kernel, s=16)
        missing = [target in values for target in targets] & ~np.isfinite(y)
        axis.scatter(x[missing], np.full(missing.sum(), floor), marker="x", color=dots.get_facecolor()[0], s=20)
    axis.set_yscale("log")
    axis.set_xticks(np.arange(len(targets)), [f"{t[0][:3]}/{t[1].split('/')[-1]}" for t in targets], rotation=90,
                    fontsize=7)
    axis.set_ylabel("bulk ESS of alpha log p per 1k tokens")
    axis.set_title("per prompt and kernel (x at the bottom: not estimable)", fontsize=9)
    axis.legend(fontsize=8)
    _save(figure, out / "ess_per_1k_tokens.png")

    kept = settings["kept_draws"]
    lags = min(12, kept - 1)
    figure, axis = plt.subplots(figsize=(6, 4))
    for kernel in kernels:
        curves = []
        for row in rows:
            if row["kernel"] != kernel:
                continue
            chains = [r for r in records if (r["task"], r["problem_id"], r["kernel"]) == (row["task"], row["problem_id"], kernel)]
            curve = mixing.autocorrelation(np.asarray([c["log_target"][-kept:] for c in chains]), lags)
            if np.isfinite(curve).all():
                curves.append(curve)
        if curves:
            axis.plot(np.arange(lags + 1), np.mean(curves, axis=0), marker="o", label=f"{kernel} ({len(curves)} prompts)")
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.set_xlabel("lag (MH steps)")
    axis.set_ylabel("autocorrelation of alpha log p (mean over prompts)")
    axis.legend(fontsize=8)
    _save(figure, out / "autocorrelation.png")

    figure, axes = plt.subplots(1, len(kernels), figsize=(3.2 * len(kernels), 3.2), sharex=True, sharey=True,
                                squeeze=False)
    for axis, kernel in zip(axes[0], kernels):
        points = [(cut / max(1, before), entropy) for r in records if r["kernel"] == kernel
                  for cut, before, entropy in zip(r["cut"], r["length_before"], r["entropy_at_cut"]) if entropy is not None]
        if points:
            position, entropy = np.asarray(points).T
            axis.hexbin(position, entropy, gridsize=20, bins="log", cmap="viridis", mincnt=1)
        axis.set_title(kernel, fontsize=9)
        axis.set_xlabel("cut / completion length")
    axes[0][0].set_ylabel("entropy at the cut (nats)")
    _save(figure, out / "cut_against_entropy.png")

    shown = targets[:TRACED_PROMPTS]
    figure, axes = plt.subplots(len(shown), len(kernels), figsize=(2.6 * len(kernels), 1.5 * len(shown) + 0.6),
                                sharex=True, squeeze=False)
    for row_axes, target in zip(axes, shown):
        for axis, kernel in zip(row_axes, kernels):
            chains = sorted((r for r in records if (r["task"], r["problem_id"], r["kernel"]) == (*target, kernel)),
                            key=lambda r: r["chain"])
            for chain in chains:
                axis.plot(chain["log_target"], linewidth=0.7)
            steps = max((len(chain["log_target"]) for chain in chains), default=0)
            if steps > kept:
                axis.axvline(steps - kept, color="grey", linewidth=0.5, linestyle=":")
            axis.tick_params(labelsize=6)
        row_axes[0].set_ylabel(f"{target[0][:3]}/{target[1].split('/')[-1]}", fontsize=7)
    for axis, kernel in zip(axes[0], kernels):
        axis.set_title(kernel, fontsize=9)
    for axis in axes[-1]:
        axis.set_xlabel("MH step", fontsize=8)
    figure.suptitle(f"alpha log p of each chain, {len(shown)} of {len(targets)} prompts (dotted: first kept draw)",
                    fontsize=9)
    _save(figure, out / "traces.png")


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)


def report(result: dict, kernels) -> str:
    """The study's report in Markdown: settings, the paired comparisons, the per-prompt table."""
    settings = result["settings"]
    lines = [f"# Mixing of the cut distributions at T_max {settings['max_new_tokens']}", "",
             f"`{result['command']}`", "",
             "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + f"; {result['chains']} chains, "
             f"{result['wall_time_s'] / 3600:.2f} h of engine time (wall clock, pauses of the run included).", "",
             result["status"], "",
             "## Prompts each kernel lets the figures be estimated on", "",
             "Of each kernel's prompts: how many have an estimable ESS of alpha log p over the kept draws "
             "(not: a constant, or chains shorter than their autocorrelation time), and how many reached "
             "split R-hat 1.05. The paired ratios below use only the prompts where both kernels' figures exist.", "",
             "| task | kernel | prompts | ESS estimable | R-hat 1.05 reached |", "|---|---|---|---|---|"]
    lines += [f"| {c['task']} | {c['kernel']} | {c['prompts']} | {c['ess_estimable']} | {c['rhat_reached']} |"
              for c in result["coverage"]]
    lines += ["", "## Paired comparisons over prompts", "",
             "Ratio kernel / baseline of each prompt's figure; geometric mean, 95% bootstrap interval over "
             "prompts, Wilcoxon signed-rank p. ESS per 1k tokens: higher is better. Tokens to R-hat 1.05: "
             "lower is better. Answer changes per 1k tokens (steps whose final answer differs from the step "
             "before, over the kept draws): how much the chains move between answers, which mixing needs but "
             "does not prove. Prompts where a figure is not estimable (or zero) for either kernel are counted, "
             "and listed in summary.json.", "",
             "| scope | figure | kernel | baseline | prompts | geometric mean | interval | Wilcoxon p | kernel larger | not estimable |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, spec=".3g": "n/a" if v is None else format(v, spec)
    for c in result["comparisons"]:
        low, high = c["interval"]
        lines.append(f"| {c['scope']} | {c['figure']} | {c['kernel']} | {c['baseline']} | {c['targets']} | "
                     f"{fmt(c['geometric_mean_ratio'])} | {fmt(low)}-{fmt(high)} | {fmt(c['wilcoxon_p'], '.2g')} | "
                     f"{c['wins']}/{c['targets']} | {len(c['not_estimable'])} |")
    lines += ["", "## Acceptance by the tokens a proposal replaced", "",
              "The current draw's length less the cut, over every step of every chain.", "",
              "| task | kernel | replaced | steps | acceptance |", "|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['kernel']} | {r['replaced']} | {r['steps']} | {r['acceptance']:.2f} |"
              for r in result["acceptance_by_replaced"]]
    lines += ["", "## Per prompt and kernel", "",
              "| task | problem | kernel | acceptance | cut / length | entropy at cut | ESS alpha log p | "
              "ESS / 1k tokens | IAT | ESS length | ESS correct | R-hat kept | steps to R-hat 1.05 | "
              "answers / 1k tokens | answer changes / 1k tokens |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["targets"]:
        lines.append(f"| {r['task']} | {r['problem_id']} | {r['kernel']} | {r['acceptance']:.2f} | "
                     f"{r['relative_cut']:.2f} | {fmt(r['entropy_at_cut'])} | {fmt(r['ess_log_target'])} | "
                     f"{fmt(r['ess_per_1k_log_target'])} | {fmt(r['iat_log_target'])} | {fmt(r['ess_length'])} | "
                     f"{fmt(r['ess_correct'])} | {fmt(r['rhat_log_target'])} | {fmt(r['steps_to_rhat'], 'd')} | "
                     f"{r['distinct_answers_per_1k']:.2f} | {r['answer_changes_per_1k']:.2f} |")
    lines += ["", "n/a: not estimable (the reasons are in summary.json: `why_<functional>`), or R-hat never "
              f"fell below 1.05 in {settings['mh_steps']} steps. R-hat kept: split R-hat of alpha log p over the "
              f"last {settings['kept_draws']} draws.", "",
              "![traces](figures/traces.png)", "",
              "![ESS per 1k tokens](figures/ess_per_1k_tokens.png)", "",
              "![autocorrelation](figures/autocorrelation.png)", "", "![cuts](figures/cut_against_entropy.png)", ""]
    return "\n".join(lines)


def status(result: dict) -> str:
    """Which (task, kernel) pairs have all their chains: a partial study says so at the top."""
    expected = result["chains_per_kernel_and_task"]
    missing = {pair: done for pair, done in result["chains_done"].items() if done < expected}
    if not missing:
        return f"Complete: every task and kernel has its {expected} chains."
    return (f"**Incomplete** (the study resumes with `{result['command'].split(';')[0]}`): chains done of "
            f"{expected}: " + ", ".join(f"{pair} {done}" for pair, done in result["chains_done"].items()) + ".")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run (or resume) the study")
    runner.add_argument("--tasks", type=lambda text: text.split(","), default=None,
                        help="default: the study's (both tasks, unless its settings name them)")
    runner.add_argument("--kernels", type=lambda text: text.split(","), default=None,
                        help="default: the study's (all four, unless its settings name them)")
    runner.set_defaults(handler=run)
    runner.add_argument("--segments", type=int, default=None,
                        help="a study in segments: extend every chain to this many segments (default: the study's)")
    summarizer = commands.add_parser("summarize", help="results/mixing/ from the records")
    summarizer.set_defaults(handler=summarize)
    for command in (runner, summarizer):
        command.add_argument("--study", choices=list(STUDIES), default="short",
                             help="short: T_max 32 (results/mixing); pilot: minutes on the small model; long-pilot: "
                             "T_max 192, to size issue 59's real-trace study; long: that study, in segments")
    args = parser.parse_args()
    for name in getattr(args, "kernels", None) or []:
        if name not in KERNELS:
            parser.error(f"--kernels: unknown kernel {name!r}; choose from {', '.join(KERNELS)}")
    for name in getattr(args, "tasks", None) or []:
        if name not in TASKS:
            parser.error(f"--tasks: unknown task {name!r}; choose from {', '.join(TASKS)}")
    args.handler(args)


if __name__ == "__main__":
    main()
