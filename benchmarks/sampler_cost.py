"""What one returned completion costs, per sampler: tokens decoded and wall time, on one problem set.

The published settings scaled down to fit a CPU (the ratios, not the absolute numbers, carry over):
T_max = 96 instead of 3072, block size 48 instead of 192, 2 MH steps per block instead of 10, alpha 4,
tau = 1/alpha; Power-SMC with 8 particles; TMC with 4 candidates x 4 rollouts of 8 tokens; best-of-N matched to the ecmh preset's mean cost. The run
is an `eval` directory, so it resumes; timings come from one run, so read the ratios.

    python -m benchmarks.sampler_cost [--limit 8] [--out runs/sampler-cost]
"""

import argparse

from ppl_ecmh.evaluation import EvalSettings, RecordStore, run_eval, summary
from ppl_ecmh.evaluation.store import RECORDS

SAMPLERS = ["ancestral", "low-temp", "karan-du", "ecmh", "power-smc", "tmc", "best-of-n"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="humaneval", help="humaneval ships with the package, so this runs offline")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--out", default="runs/sampler-cost")
    args = parser.parse_args()
    settings = EvalSettings(task=args.task, limit=args.limit, alpha=4.0, max_new_tokens=96, block_size=48,
                            num_mcmc_steps=2, num_particles=8, batch_size=args.limit)
    print(f"settings: {settings}")
    run_eval(settings, SAMPLERS, [0], args.out)
    table = summary.accuracy_table(summary.records_frame(RecordStore(f"{args.out}/{RECORDS}").read()))
    table["wall_vs_ancestral"] = table["wall_s_per_problem"] / float(table.loc[table["sampler"] == "ancestral",
                                                                             "wall_s_per_problem"].iloc[0])
    columns = ["sampler", "tokens_per_problem", "tokens_vs_ancestral", "wall_s_per_problem", "wall_vs_ancestral",
               "acceptance", "accuracy"]
    print(table[columns].round(2).to_string(index=False))


if __name__ == "__main__":
    main()
