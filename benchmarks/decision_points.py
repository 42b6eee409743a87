"""When do entropy cuts help? Suffix MH on the decision-point family (`ppl_ecmh.lm.decision_points`),
computed exactly on decision tuples (`ppl_ecmh.evaluation.decision_points`): no Monte Carlo error.

Three maps, each row a (model, cut) pair with the cut's figures and its ratio to the uniform cut:
- `length`: T from 64 to 1,024, d = 2, 4 or 8 decisions placed early, spread or late;
- `quiet`: decisions whose entropy the filler around them reaches or passes (base noise raised);
- `skewed`: decisions whose likely branch grows likelier (their entropy falls below the filler's)
  while the rare branch keeps 80% of pi_alpha's mass, because the text after the likely one is
  noisier (`balancing_noise`);
- `distractors`: entropy spikes that are not decisions, 0 to 32 of them.
Each row has the ESS of the number of clean decisions per 1,000 decoded tokens at stationarity,
its integrated autocorrelation time, the tokens a step decodes, the tokens from the all-likely
(branch 0) start until the decision tuple is within 0.1 of pi_alpha in total variation, and the
back-of-envelope prediction of docs/decision-points.md. Writes results/decision-points/synthetic.json
and its figures; `--small` is the notebook's and the test's subset.

    python -m benchmarks.decision_points [--small]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ppl_ecmh.evaluation import decision_points as exact
from ppl_ecmh.lm.decision_points import PLACEMENTS, DecisionPoints, placed
from ppl_ecmh.samplers.cuts import get_cut

ALPHA = 4.0
CUTS = {"uniform": get_cut("uniform"), "entropy": get_cut("entropy"), "entropy_jump": get_cut("entropy_jump"),
        "mixture": get_cut("mixture")}
OUT = Path("results/decision-points")


def evenly(length: int, count: int, avoid: tuple[int, ...]) -> tuple[int, ...]:
    """`count` positions spread over the completion, moved off any in `avoid`."""
    spots = [int((i + 0.5) * length / count) for i in range(count)]
    return tuple(spot + 1 if spot in avoid else spot for spot in spots)


def models(small: bool) -> list[tuple[str, dict, DecisionPoints]]:
    """(map, knobs, model) for every model of the study (`small`: T <= 256, d <= 4)."""
    lengths, counts = ([64, 128, 256], [2, 4]) if small else ([64, 128, 256, 512, 1024], [2, 4, 8])
    found = []
    for length in lengths:
        for count in counts:
            for placement in PLACEMENTS:
                knobs = dict(length=length, decisions=count, placement=placement)
                found.append(("length", knobs, DecisionPoints(length, placed(length, count, placement))))
    length, count = (128, 4) if small else (256, 4)
    positions = placed(length, count, "spread")
    for base in [0.002, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5]:
        knobs = dict(length=length, decisions=count, base_noise=base)
        found.append(("quiet", knobs, DecisionPoints(length, positions, noise=(0.05, 0.005, base))))
    for likely in [0.6, 0.7, 0.8, 0.9, 0.95, 0.98]:  # the branch p prefers ever likelier: a decision's entropy falls
        knobs = dict(length=length, decisions=count, likely_branch=likely)
        noise = (balancing_noise(likely), 0.005, 0.01)
        found.append(("skewed", knobs, DecisionPoints(length, positions, branch_probs=(likely, 1 - likely), noise=noise)))
    for spikes in [0, 2, 4, 8, 16, 32]:
        knobs = dict(length=length, decisions=count, distractors=spikes)
        model = DecisionPoints(length, positions, distractors=evenly(length, spikes, positions) if spikes else ())
        found.append(("distractors", knobs, model))
    return found


def balancing_noise(likely: float, clean_share: float = 0.8, clean_noise: float = 0.005) -> float:
    """The noise after the likely branch that leaves pi_alpha's clean share of one decision at
    `clean_share`: alpha log((1 - p) / p) + W (log f(clean_noise) - log f(eps)) = logit(clean_share),
    with f(eps) = (1 - eps)^alpha + (V - 1)^(1 - alpha) eps^alpha, found by bisection (f falls on
    (0, 1 - 1/V))."""
    defaults = DecisionPoints(2, (0,))
    words, window = defaults.vocab_size, defaults.consequence
    log_f = lambda eps: np.log((1 - eps) ** ALPHA + (words - 1) ** (1 - ALPHA) * eps**ALPHA)
    wanted = log_f(clean_noise) - (np.log(clean_share / (1 - clean_share)) - ALPHA * np.log((1 - likely) / likely)) / window
    low, high = clean_noise, 1 - 1 / words
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if log_f(middle) > wanted else (low, middle)
    return (low + high) / 2


def envelope(chain: exact.Chain) -> float:
    """The back-of-envelope rate: how often a step re-proposes every decision (the first decision
    moves only then), per decoded token, at stationarity (docs/decision-points.md)."""
    return float(chain.target @ chain.cut_mass[:, 0]) / float(chain.target @ chain.cost)


def rows_of(name: str, knobs: dict, model: DecisionPoints) -> list[dict]:
    """One row per cut, with its ratios to the uniform cut."""
    assert 0 not in model.positions + model.distractors, "position 0 stands for the base filler's entropy"
    clean = exact.clean_decisions(model)
    start = int(model.tuple_index(np.zeros(len(model.positions), int)))
    rows = []
    for cut_name, cut in CUTS.items():
        chain = exact.exact_chain(model, cut, ALPHA)
        steps, tokens = exact.steps_to_distance(chain, start)
        entropy = exact.entropy_profiles(model)
        rows.append(dict(map=name, **knobs, cut=cut_name, ess_per_1k_tokens=exact.ess_per_thousand_tokens(chain, clean),
                         tau_int=exact.integrated_autocorrelation_time(chain, clean),
                         tokens_per_step=float(chain.target @ chain.cost), steps_to_tv_0_1=steps,
                         tokens_to_tv_0_1=tokens, envelope=envelope(chain),
                         clean_share=float(chain.target @ clean) / len(model.positions),
                         decision_entropy=float(entropy[0, model.positions[0]]),
                         after_entropy=float(entropy[0, model.positions[0] + 1]),  # after the likely branch
                         base_entropy=float(entropy[0, 0])))  # position 0 is base filler in every model here
    uniform = rows[0]
    for row in rows:
        row["ess_ratio"] = row["ess_per_1k_tokens"] / uniform["ess_per_1k_tokens"]
        row["mixing_ratio"] = uniform["tokens_to_tv_0_1"] / row["tokens_to_tv_0_1"]
        row["envelope_ratio"] = row["envelope"] / uniform["envelope"]
    return rows


def study(small: bool = False, progress: bool = True) -> list[dict]:
    rows, began = [], time.time()
    for name, knobs, model in models(small):
        rows += rows_of(name, knobs, model)
        if progress:
            print(f"{time.time() - began:6.0f} s  {name} {knobs}: " + ", ".join(
                f"{r['cut']} {r['ess_ratio']:.2f}" for r in rows[-len(CUTS):]), flush=True)
    return rows


def jump_at(row: dict) -> float:
    """The entropy jump at the first decision, from the base filler before it."""
    return row["decision_entropy"] - row["base_entropy"]


def jump_after(row: dict) -> float:
    """The entropy jump right after the first decision, into the text of its likely branch."""
    return row["after_entropy"] - row["decision_entropy"]


def figures(rows: list[dict], out: Path) -> list[Path]:
    """The maps, drawn: ratio to uniform against T per placement, against the filler's entropy,
    against the distractors, and the envelope's prediction against the exact ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    cuts = [cut for cut in CUTS if cut != "uniform"]
    paths = []
    length = [r for r in rows if r["map"] == "length"]
    counts = sorted({r["decisions"] for r in length})
    figure, axes = plt.subplots(len(counts), len(PLACEMENTS), figsize=(11, 2.8 * len(counts)), sharex=True, squeeze=False)
    for i, count in enumerate(counts):
        for j, placement in enumerate(PLACEMENTS):
            axis = axes[i, j]
            for cut in cuts:
                mine = sorted((r for r in length if r["cut"] == cut and r["decisions"] == count
                               and r["placement"] == placement), key=lambda r: r["length"])
                axis.plot([r["length"] for r in mine], [r["ess_ratio"] for r in mine], marker="o", label=cut)
            axis.axhline(1.0, color="grey", lw=0.8)
            axis.set_xscale("log", base=2)
            axis.set_title(f"{count} decisions, {placement}", fontsize=9)
            if j == 0:
                axis.set_ylabel("ESS / token vs uniform")
            if i == len(counts) - 1:
                axis.set_xlabel("T (tokens)")
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    paths.append(out / "ratio_by_length.png")
    figure.savefig(paths[-1], dpi=110)
    figure, (quiet_axis, skew_axis, spike_axis, envelope_axis) = plt.subplots(1, 4, figsize=(16, 3.6))
    for cut in cuts:
        quiet = sorted((r for r in rows if r["map"] == "quiet" and r["cut"] == cut), key=lambda r: r["base_entropy"])
        quiet_axis.plot([r["base_entropy"] - r["decision_entropy"] for r in quiet], [r["ess_ratio"] for r in quiet],
                        marker="o", label=cut)
        skewed = sorted((r for r in rows if r["map"] == "skewed" and r["cut"] == cut), key=lambda r: r["likely_branch"])
        skew_axis.plot([jump_after(r) - jump_at(r) for r in skewed], [r["ess_ratio"] for r in skewed],
                       marker="o", label=cut)
        spikes = sorted((r for r in rows if r["map"] == "distractors" and r["cut"] == cut), key=lambda r: r["distractors"])
        spike_axis.plot([r["distractors"] for r in spikes], [r["ess_ratio"] for r in spikes], marker="o", label=cut)
        others = [r for r in rows if r["cut"] == cut]
        envelope_axis.scatter([r["envelope_ratio"] for r in others], [r["ess_ratio"] for r in others], s=12, label=cut)
    quiet_axis.set_xlabel("filler entropy - decision entropy (nats)")
    skew_axis.set_xlabel("entropy jump after the decision - jump at it (nats)")
    spike_axis.set_xlabel("distractor spikes")
    envelope_axis.set_xlabel("envelope's predicted ratio")
    envelope_axis.set_xscale("log")
    envelope_axis.set_yscale("log")
    limits = envelope_axis.get_xlim()
    envelope_axis.plot(limits, limits, color="grey", lw=0.8)
    for axis in (quiet_axis, skew_axis, spike_axis):
        axis.axhline(1.0, color="grey", lw=0.8)
    for axis in (quiet_axis, skew_axis, spike_axis, envelope_axis):
        axis.set_ylabel("ESS / token vs uniform")
    quiet_axis.legend(fontsize=8)
    figure.tight_layout()
    paths.append(out / "boundaries.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close("all")
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="T <= 256 and d <= 4 (minutes less)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = study(args.small)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "synthetic-small.json" if args.small else "synthetic.json"
    (args.out / name).write_text(json.dumps(dict(alpha=ALPHA, command="python -m benchmarks.decision_points"
                                                 + (" --small" if args.small else ""), rows=rows), indent=1))
    for path in figures(rows, args.out / "figures"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
