"""Why do entropy cuts accept less on real traces? log A split into its two terms on the real-trace
study's own states (issue 59).

The real-trace study (`benchmarks.mixing --study long`) found the entropy cuts accepting about a
third as often as the uniform cut at the same number of replaced tokens. log A is the target
against the proposal over the two suffixes plus the cut distribution's ratio
log q_cut(t | x') - log q_cut(t | x) (`ppl_ecmh.samplers.mh.log_acceptance_terms`). This takes
the current draw of chain 0 of every prompt and kernel in results/decision-points/real/ (the last
segment every chain has), proposes from each state under each cut as a step would (a cut drawn
from q_cut(. | x), the suffix after it from the proposal at tau), and records both terms and whether the proposal is the current draw
again. Per cut, overall and by replaced tokens: the acceptance probability, what it would be with
the cut term alone removed (not a valid kernel; it apportions the rejections), the mean cut term,
the share of proposals that change nothing, the acceptance of those that change something, and
how many such changes a step is expected to accept per 1,000 tokens it decodes.

    python -m benchmarks.cut_ratio [--proposals 8]    # results/decision-points/real/cut_ratio.json
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from benchmarks import mixing
from ppl_ecmh import load_model
from ppl_ecmh.evaluation.store import RecordStore, replace_atomically
from ppl_ecmh.lm.generation import extend, new_sequences, padded_completions, teacher_force
from ppl_ecmh.samplers.mh import cut_log_probs, log_acceptance_terms

SETTINGS, RESULTS = mixing.STUDIES["long"]
BATCH = 64  # rows per compiled batch: the caches of 64 rows of smollm2-135m at 400 positions fit easily


def current_states(records: list[dict]) -> list[dict]:
    """Chain 0's draw of every (prompt, kernel) at the last segment every chain of the study has."""
    done = min(mixing.whole_chains(records), key=lambda r: r["segments"])["segments"]
    return [dict(problem_id=r["problem_id"], kernel=r["kernel"], tokens=r["last_tokens"])
            for r in records if r["chain"] == 0 and r["segment"] == done - 1]


@functools.partial(jax.jit, static_argnames=("cut", "alpha", "tau", "max_new_tokens"))
def decompose(lm, seqs, completions, key, *, cut, alpha, tau, max_new_tokens) -> dict:
    """Per row of `completions` (the current draws, padded): a cut drawn from q_cut(. | x), a
    proposal after it, and the two terms of log A."""
    current, cache = teacher_force(lm, seqs, completions, tau)
    cut_key, proposal_key = jax.random.split(key)
    t = jax.random.categorical(cut_key, cut_log_probs(cut, current)).astype(jnp.int32)
    proposed, _ = extend(lm, proposal_key, current, cache, t, jnp.full_like(t, max_new_tokens), tau)
    terms = log_acceptance_terms(current, proposed, t, cut, alpha)
    same = (proposed.length == current.length) & jnp.all(proposed.tokens == current.tokens, axis=1)
    return dict(target_over_proposal=terms.target_over_proposal, cut_ratio=terms.cut_ratio,
                replaced=current.length - t, decoded=proposed.length - t, unchanged=same)


def padded(lm, completions: list[list[int]], max_new_tokens: int) -> jax.Array:
    tokens = np.zeros((len(completions), max_new_tokens), np.int32)
    for row, completion in enumerate(completions):
        tokens[row, : len(completion)] = completion
    return padded_completions(jnp.asarray(tokens), jnp.asarray([len(c) for c in completions]), lm.eos_token_ids[0], lm)


def summarize(rows: list[dict]) -> list[dict]:
    """Per cut and bin of replaced tokens (and all together): acceptance with and without the cut
    term, and the mean cut term."""
    out = []
    for cut in mixing.LONG["kernels"]:
        chosen = [r for r in rows if r["cut"] == cut]
        for label, low, high in [("all", 0, 10**9)] + mixing.replaced_bins():
            part = [r for r in chosen if low <= r["replaced"] < high]
            if not part:
                continue
            alone = np.asarray([r["target_over_proposal"] for r in part])
            cut_term = np.asarray([r["cut_ratio"] for r in part])
            accept = np.minimum(1, np.exp(alone + cut_term))
            changed = ~np.asarray([r["unchanged"] for r in part])
            out.append(dict(cut=cut, replaced=label, proposals=len(part), acceptance=float(accept.mean()),
                            acceptance_without_cut_term=float(np.mean(np.minimum(1, np.exp(alone)))),
                            mean_cut_term=float(cut_term.mean()), unchanged=float(1 - changed.mean()),
                            acceptance_of_changes=float(accept[changed].mean()) if changed.any() else None,
                            accepted_changes_per_1k_tokens=float(1000 * accept[changed].sum()
                                                                 / sum(r["decoded"] for r in part)),
                            median_target_over_proposal=float(np.median(alone))))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proposals", type=int, default=8, help="proposals per state and cut")
    args = parser.parse_args()
    model = load_model(SETTINGS["model"])
    task = SETTINGS["tasks"][0]
    study = mixing.Study(task, model, SETTINGS, RESULTS)
    states = current_states(RecordStore(RESULTS / mixing.CHAINS, mixing.CHAIN_KEY + ("segment",)).read())
    rows = []
    key = jax.random.PRNGKey(SETTINGS["seed"])
    steps = dict(alpha=SETTINGS["alpha"], tau=SETTINGS["tau"], max_new_tokens=SETTINGS["max_new_tokens"])
    work = [state for state in states for _ in range(args.proposals)]
    bar = tqdm(total=len(work) * len(SETTINGS["kernels"]), desc="proposals", unit="proposal")
    for cut in SETTINGS["kernels"]:
        for start in range(0, len(work), BATCH):
            part = work[start : start + BATCH]
            seqs = new_sequences([study.prompts[s["problem_id"]] for s in part], SETTINGS["max_new_tokens"],
                                 prompt_block=study.prompt_block)
            key, sub = jax.random.split(key)
            result = decompose(model.lm, seqs, padded(model.lm, [s["tokens"] for s in part], SETTINGS["max_new_tokens"]),
                               sub, cut=mixing.KERNELS[cut], **steps)
            rows += [dict(cut=cut, state_kernel=s["kernel"], problem_id=s["problem_id"],
                          **{name: np.asarray(value)[i].item() for name, value in result.items()})
                     for i, s in enumerate(part)]
            bar.update(len(part))
    bar.close()
    summary = dict(command="python -m benchmarks.cut_ratio", settings=SETTINGS, proposals_per_state=args.proposals,
                   states=len(states), by_cut=summarize(rows), rows=rows)
    replace_atomically(RESULTS / "cut_ratio.json", json.dumps(summary, indent=1) + "\n")
    for row in summary["by_cut"]:
        changes = "n/a" if row["acceptance_of_changes"] is None else f"{row['acceptance_of_changes']:.3f}"
        print(f"{row['cut']:>13} {row['replaced']:>8} n={row['proposals']:4d} acceptance {row['acceptance']:.3f} "
              f"(without the cut term {row['acceptance_without_cut_term']:.3f}, mean cut term "
              f"{row['mean_cut_term']:+.2f}); unchanged {row['unchanged']:.2f}, acceptance of changes {changes} "
              f"({row['accepted_changes_per_1k_tokens']:.2f} per 1k tokens), "
              f"median target/proposal term {row['median_target_over_proposal']:+.1f}")


if __name__ == "__main__":
    main()
