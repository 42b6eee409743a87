"""What differential grading costs: HumanEval's canonical solutions graded two ways in one run.

- differential: `check_function`, the program's outputs from the sandbox and the test in the
  referee (one sandbox run and two passes of the check for most problems);
- one confined run: the program and its test in a single sandbox run, as graded before (its exit
  status is not a trustworthy verdict; this is only its cost).

With `--records FILE` it also regrades stored evaluation records (an `outcomes.jsonl` of HumanEval)
and counts the records whose stored `correct` the differential grade agrees with.

    python -m benchmarks.grading [--limit N] [--records results/humaneval/outcomes.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time

from ppl_ecmh.sandbox import check_function, run_python
from ppl_ecmh.tasks.code import HumanEval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N problems (default: all 164)")
    parser.add_argument("--records", default=None, help="stored HumanEval records to regrade")
    args = parser.parse_args()
    task = HumanEval()
    problems = task.load(limit=args.limit)

    def differential(program, problem) -> bool:
        return check_function(task.candidate_program(program, problem), problem.metadata["entry_point"],
                              problem.metadata["test"], setup=problem.question, limits=task.limits).passed

    def one_run(program, problem) -> bool:
        test = f"{problem.metadata['test']}\n\ncheck({problem.metadata['entry_point']})\n"
        return run_python(task.candidate_program(program, problem) + "\n\n" + test, task.limits).completed

    differential(problems[0].answer, problems[0])  # starts the referee, which lives on between grades
    timings = {}
    for name, grade in (("one confined run", one_run), ("differential", differential)):
        started = time.perf_counter()
        passed = sum(grade(problem.answer, problem) for problem in problems)
        timings[name] = (time.perf_counter() - started) / len(problems)
        print(f"{name:>17}: {passed}/{len(problems)} canonical solutions pass, {timings[name] * 1e3:.1f} ms per problem")
    print(f"differential / one confined run: {timings['differential'] / timings['one confined run']:.2f}")

    if args.records:
        by_id = {problem.id: problem for problem in task.load()}
        records = [json.loads(line) for line in open(args.records, encoding="utf-8")]
        started, agree = time.perf_counter(), 0
        for record in records:
            agree += differential(record["answer"], by_id[record["problem_id"]]) == record["correct"]
        seconds = (time.perf_counter() - started) / len(records)
        print(f"regraded {len(records)} records: {agree} agree with the stored grade, {seconds * 1e3:.1f} ms per record")


if __name__ == "__main__":
    main()
