"""The split of log A on real traces (`benchmarks.cut_ratio`): its terms on a model where they are
known, and its committed summary against its committed rows."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import cut_ratio
from ppl_ecmh.lm.decision_points import DecisionPoints
from ppl_ecmh.lm.generation import new_sequences
from ppl_ecmh.registry import SamplerSpec
from ppl_ecmh.runner import run_sampler
from ppl_ecmh.samplers.cuts import EntropyJump, Uniform

MODEL = DecisionPoints(length=32, positions=(4, 20))


def terms(alpha, tau, cut, rows=16):
    """The split of log A from `rows` ancestral draws of the model as current states."""
    lm = MODEL.lm()
    draws = run_sampler(lm, [0], SamplerSpec("ancestral"), alpha=alpha, max_new_tokens=MODEL.length,
                        num_chains=rows, num_draws=0, progress=False)
    states = [draws.tokens[row, 0, : draws.stats["length"][row, 0]].tolist() for row in range(rows)]
    result = cut_ratio.decompose(lm, new_sequences([[0]] * rows, MODEL.length),
                                 cut_ratio.padded(lm, states, MODEL.length), jax.random.PRNGKey(0), cut=cut,
                                 alpha=alpha, tau=tau, max_new_tokens=MODEL.length)
    return {name: np.asarray(value) for name, value in result.items()}


@pytest.mark.parametrize("cut", [Uniform(), EntropyJump()])
def test_at_alpha_1_and_tau_1_the_target_and_the_proposal_cancel(cut):
    """Proposing from the target itself: the target-over-proposal term is 0 for every proposal."""
    result = terms(1.0, 1.0, cut)
    np.testing.assert_allclose(result["target_over_proposal"], 0.0, atol=1e-4)
    assert np.all(result["replaced"] > 0) and np.all(result["decoded"] == result["replaced"])


def test_at_alpha_4_the_target_and_the_proposal_do_not_cancel():
    result = terms(4.0, 0.25, Uniform())
    assert np.abs(result["target_over_proposal"]).max() > 1.0
    np.testing.assert_allclose(result["cut_ratio"], 0.0, atol=1e-6)  # every completion has length T


def test_the_summary_splits_acceptance_by_cut_and_replaced_tokens():
    rows = [dict(cut="random", replaced=10, decoded=10, target_over_proposal=0.0, cut_ratio=0.0, unchanged=True),
            dict(cut="random", replaced=40, decoded=40, target_over_proposal=np.log(0.5), cut_ratio=0.0,
                 unchanged=False),
            dict(cut="entropy_jump", replaced=10, decoded=12, target_over_proposal=-50.0, cut_ratio=2.0,
                 unchanged=False)]
    table = {(r["cut"], r["replaced"]): r for r in cut_ratio.summarize(rows)}
    assert table["random", "all"]["acceptance"] == pytest.approx(0.75)
    assert table["random", "all"]["unchanged"] == 0.5 and table["random", "all"]["acceptance_of_changes"] == 0.5
    assert table["random", "all"]["accepted_changes_per_1k_tokens"] == pytest.approx(1000 * 0.5 / 50)
    assert table["random", "32-63"]["acceptance"] == pytest.approx(0.5)
    assert table["entropy_jump", "all"]["acceptance_without_cut_term"] < table["entropy_jump", "all"]["acceptance"]


def test_the_committed_split_rederives_from_its_rows():
    path = Path(cut_ratio.__file__).resolve().parents[1] / cut_ratio.RESULTS / "cut_ratio.json"
    if not path.is_file():
        pytest.skip("no committed split of log A")
    committed = json.loads(path.read_text())
    assert cut_ratio.summarize(committed["rows"]) == committed["by_cut"]
