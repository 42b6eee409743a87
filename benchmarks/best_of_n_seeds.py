"""best-of-n on the HumanEval study at more seeds: is its 42/80 (first run) against 30/80 (engine
rerun, seed 0) chance or a defect?

Same problems, settings and token budget as the rerun's best-of-n (1408 tokens per problem, ecmh's
mean at seed 0); only the seed changes. Resumable: records go to runs/decision-points/best-of-n/,
and `summarize` writes results/decision-points/best-of-n/ (the records without their completion
text, which `run` restores first, and summary.json with the accuracy per seed).

    python -m benchmarks.best_of_n_seeds run --seeds 1,2
    python -m benchmarks.best_of_n_seeds summarize
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from benchmarks.study import OUTCOMES, RESULTS, export_outcomes, restore_outcomes, settings_for
from ppl_ecmh.evaluation import RecordStore, run_eval, summary
from ppl_ecmh.evaluation.store import RECORDS, open_results

BUDGET = 1408  # matched_budget of the rerun's ecmh records at seed 0 (results/humaneval/summary.json)
RUNS, OUT = Path("runs/decision-points/best-of-n"), RESULTS / "decision-points/best-of-n"
FIRST_RUN = dict(seed=0, right=42, problems=80, commit="17b758c", path="lockstep, before the engine")


def settings():
    return dataclasses.replace(settings_for("humaneval"), bon_budget=BUDGET)


def run(args) -> None:
    store = open_results(RUNS, settings())
    print(f"restored {restore_outcomes(RecordStore(OUT / OUTCOMES), store)} records from {OUT / OUTCOMES}")
    run_eval(settings(), ["best-of-n"], args.seeds, RUNS)


def per_seed(records: list[dict]) -> list[dict]:
    """Accuracy per seed with its Wilson interval, and how the kept completions ended: finished
    (EOS before the token limit) and right when finished."""
    rows = []
    for seed in sorted({r["seed"] for r in records}):
        mine = [r for r in records if r["seed"] == seed]
        right = sum(r["correct"] for r in mine)
        finished = [r for r in mine if r["completion_length"] < settings().max_new_tokens]
        low, high = summary.wilson_interval(right, len(mine))
        rows.append(dict(seed=seed, right=right, problems=len(mine), accuracy=right / len(mine), ci_low=low,
                         ci_high=high, finished=len(finished),
                         right_when_finished=sum(r["correct"] for r in finished) / max(1, len(finished))))
    return rows


def chance_of_at_least(rates: np.ndarray, count: int) -> float:
    """P(a run solves at least `count` problems) when problem i is solved with probability
    rates[i], independently: the Poisson-binomial tail, exactly, by convolution."""
    law = np.array([1.0])
    for rate in rates:
        law = np.convolve(law, [1 - rate, rate])
    return float(law[count:].sum())


def study_summary(records: list[dict]) -> dict:
    """Seed 0 comes from the committed rerun (results/humaneval/outcomes.jsonl), the others from
    this study's records. The test of chance: how likely a run at the engine's per-problem pass
    rates (each shrunk as (k + 1/2) / (n + 1) over n seeds, so that no rate is 0 or 1) solves as
    many problems as the first run did."""
    rerun = [r for r in RecordStore(RESULTS / "humaneval" / OUTCOMES).read() if r["sampler"] == "best-of-n"]
    engine = rerun + [r for r in records if r["seed"] != 0]
    rows = per_seed(engine)
    right, problems = sum(r["right"] for r in rows), sum(r["problems"] for r in rows)
    low, high = summary.difference_interval(FIRST_RUN["right"], FIRST_RUN["problems"], right, problems)
    seeds = sorted({r["seed"] for r in engine})
    solved: dict = {}
    for record in engine:
        solved.setdefault(record["problem_id"], []).append(record["correct"])
    complete = [sum(outcomes) for outcomes in solved.values() if len(outcomes) == len(seeds)]
    rates = (np.array(complete) + 0.5) / (len(seeds) + 1)
    return {"command": "python -m benchmarks.best_of_n_seeds run --seeds 1,2; python -m benchmarks.best_of_n_seeds summarize",
            "settings": dataclasses.asdict(settings()), "first_run": FIRST_RUN, "seeds": rows,
            "engine_pooled": dict(right=right, problems=problems, accuracy=right / problems),
            "first_run_minus_engine": dict(difference=FIRST_RUN["right"] / FIRST_RUN["problems"] - right / problems,
                                           ci_low=low, ci_high=high),
            "problems_solved_by_seeds": {str(k): complete.count(k) for k in range(len(seeds) + 1)},
            "run_sd_at_engine_rates": float(np.sqrt((rates * (1 - rates)).sum())),
            "chance_of_first_runs_count": chance_of_at_least(rates, FIRST_RUN["right"]) if len(complete) == 80 else None}


def summarize(args) -> None:
    records = RecordStore(RUNS / RECORDS).read()
    OUT.mkdir(parents=True, exist_ok=True)
    result = study_summary(records)
    (OUT / "summary.json").write_text(json.dumps(result, indent=2))
    export_outcomes(records, OUT / OUTCOMES)
    for row in result["seeds"]:
        print(f"seed {row['seed']}: {row['right']}/{row['problems']} ({row['ci_low']:.3f}-{row['ci_high']:.3f}), "
              f"finished {row['finished']}, right when finished {row['right_when_finished']:.2f}")
    gap = result["first_run_minus_engine"]
    print(f"first run 42/80 minus the engine's pooled accuracy: {gap['difference']:+.3f} "
          f"({gap['ci_low']:+.3f} to {gap['ci_high']:+.3f})")
    print(f"problems solved by k of the engine seeds: {result['problems_solved_by_seeds']}; a run's SD at those rates "
          f"{result['run_sd_at_engine_rates']:.2f}; P(>= 42 of 80) {result['chance_of_first_runs_count']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run (or resume) best-of-n at more seeds")
    runner.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[1, 2])
    runner.set_defaults(handler=run)
    commands.add_parser("summarize", help="write results/decision-points/best-of-n/").set_defaults(handler=summarize)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
