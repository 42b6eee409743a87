"""One evaluation four ways: one device, two forced host devices (data parallel), one and two Ray
workers of one CPU each. Prints each wall time, its ratio to the single-device run, and whether
every record's draw equals the single-device run's (docs/scale-out.md quotes a run of this).

    python -m benchmarks.scale_out --limit 8 --max-new-tokens 16

Each configuration is a fresh `ppl-ecmh eval` process (forced host devices must be set before JAX
starts), so the wall times include loading the model and compiling, as a user's run does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"
DRAW_FIELDS = ("completion", "answer", "tokens_generated", "completion_length", "alpha_log_p", "acceptance")


def run(args, out: Path, devices: int = 1, ray_workers: int | None = None) -> float:
    command = [sys.executable, "-m", "ppl_ecmh.cli", "eval", "--task", "gsm8k", "--source", str(GSM8K),
               "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens), "--mh-steps",
               str(args.mh_steps), "--samplers", args.samplers, "--batch-size", str(args.batch_size),
               "--out", str(out), "--no-progress"]
    command += ["--ray", "--ray-workers", str(ray_workers)] if ray_workers else ["--devices", str(devices)]
    env = os.environ | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def records(out: Path) -> dict:
    lines = (out / "records.jsonl").read_text().splitlines()
    return {(r["sampler"], r["seed"], r["problem_id"]): r for r in map(json.loads, lines)}


def agreement(out: Path, base: Path) -> str:
    """Identical draws, or how they differ: completions that differ, and the largest gap in log p."""
    ours, theirs = records(out), records(base)
    if {k: tuple(r[f] for f in DRAW_FIELDS) for k, r in ours.items()} == \
            {k: tuple(r[f] for f in DRAW_FIELDS) for k, r in theirs.items()}:
        return "records identical"
    other = sum(ours[k]["completion"] != theirs[k]["completion"] for k in theirs)
    gap = max(abs(ours[k]["alpha_log_p"] - theirs[k]["alpha_log_p"]) / max(1.0, abs(theirs[k]["alpha_log_p"]))
              for k in theirs if ours[k]["completion"] == theirs[k]["completion"])
    return f"{other}/{len(theirs)} completions differ; the others' alpha log p within {gap:.1e} relative"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--mh-steps", type=int, default=4)
    parser.add_argument("--samplers", default="entropy-cut")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        configurations = {"1 device": dict(devices=1), "2 forced host devices": dict(devices=2),
                          "1 Ray worker": dict(ray_workers=1), "2 Ray workers": dict(ray_workers=2)}
        seconds, agree = {}, {}
        for name, options in configurations.items():
            out = folder / name.replace(" ", "_")
            seconds[name] = run(args, out, **options)
            agree[name] = agreement(out, folder / "1_device")
        base = seconds["1 device"]
        print(f"gsm8k, {args.limit} problems, {args.samplers}, T={args.max_new_tokens}, {args.mh_steps} MH steps, "
              f"{args.batch_size} slots")
        for name in configurations:
            print(f"{name:>24}: {seconds[name]:7.1f} s  ({base / seconds[name]:.2f}x of 1 device)  {agree[name]}")


if __name__ == "__main__":
    main()
