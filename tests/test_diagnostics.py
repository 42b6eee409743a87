"""ArviZ conversion and diagnostics, on synthetic chains whose properties are known."""

import json

import numpy as np
import pytest

from ppl_ecmh.analysis import diagnostics
from ppl_ecmh.runner import Run
from tests.chains import ar1


def synthetic_run(log_target, alpha=4.0, positions=5):
    chains, draws = log_target.shape
    rng = np.random.default_rng(0)
    stats = {
        "log_target": log_target,
        "length": rng.integers(1, positions + 1, size=(chains, draws)),
        "accepted": (rng.random((chains, draws)) < np.linspace(0.2, 0.8, chains)[:, None]).astype(np.float32),
        "accept_prob": rng.random((chains, draws)).astype(np.float32),
        "cut": rng.integers(0, positions, size=(chains, draws)),
        "old_suffix_length": rng.integers(1, positions, size=(chains, draws)),
        "new_suffix_length": rng.integers(1, positions, size=(chains, draws)),
        "num_generated": np.full((chains, draws), 10),
    }
    settings = {"sampler": "entropy-cut", "alpha": alpha, "tau": 1 / alpha, "cut": "EntropyJump(power=4.0)", "seed": 3}
    tokens = rng.integers(0, 50, size=(chains, draws, positions)).astype(np.int32)
    entropy = rng.random((chains, draws, positions)).astype(np.float32)
    return Run(settings, tokens, entropy, stats, wall_time=np.full(draws, 0.5), initial_generated=np.array([7] + [0] * (chains - 1)))


@pytest.mark.parametrize("phi, draws", [(0.0, 4000), (0.5, 4000), (0.9, 20000)])
def test_ess_of_ar1_chains_matches_theory(phi, draws):
    """AR(1) with coefficient phi has ESS = N (1 - phi) / (1 + phi). The chains are long enough
    that the estimate's spread over seeds (sd 2-4%) is far inside the 15% tolerance: at phi 0.9
    and 4000 draws, 12 of 100 seeds missed it and 7 had an R-hat above 1.01."""
    idata = diagnostics.to_inference_data(synthetic_run(ar1(0, phi, draws=draws)))
    table = diagnostics.summary(idata, var_names=("log_target",))
    expected = 4 * draws * (1 - phi) / (1 + phi)
    assert abs(table.loc["log_target", "ess_bulk"] / expected - 1) < 0.15
    assert table.loc["log_target", "r_hat"] < 1.01
    assert table.loc["log_target", "ess_bulk_per_1k_tokens"] == pytest.approx(
        1000 * table.loc["log_target", "ess_bulk"] / (4 * draws * 10 + 7)
    )


def test_chains_stuck_in_different_modes_have_large_rhat():
    chains = ar1(0, 0.5, draws=4000) + np.array([0.0, 0.0, 6.0, 6.0])[:, None]
    table = diagnostics.summary(diagnostics.to_inference_data(synthetic_run(chains)), var_names=("log_target",))
    # rank normalization caps R-hat for two perfectly separated pairs of chains near 1.73, however
    # far apart the modes are; well-mixed chains stay below 1.01 (test above)
    assert table.loc["log_target", "r_hat"] > 1.5


@pytest.mark.parametrize("draws", [4, 8, 9])
def test_ess_is_not_a_number_when_it_would_not_depend_on_the_data(draws):
    """Below 10 draws per chain ArviZ's ESS is its cap N log10 N for any data (the issue's 48.165
    for 4 chains of 8 draws): white noise and a random walk get the same value, so it is n/a."""
    az = diagnostics.import_arviz()
    rng = np.random.default_rng(draws)
    noise, walk = rng.normal(size=(4, draws)), rng.normal(size=(4, draws)).cumsum(axis=1)
    assert float(az.ess(noise, method="bulk")) == float(az.ess(walk, method="bulk"))  # what ArviZ gives
    for values in (noise, walk):
        for method in ("bulk", "tail"):
            estimate = diagnostics.ess(values, method)
            assert np.isnan(estimate.value) and estimate.reason == "needs >= 10 draws per chain"
    assert diagnostics.rhat(noise).estimable  # R-hat is data-dependent from 4 draws on


def test_ess_from_10_draws_on_depends_on_the_data():
    rng = np.random.default_rng(0)
    noise = diagnostics.ess(rng.normal(size=(4, 40)))
    correlated = diagnostics.ess(ar1(1, 0.7, draws=40))  # autocorrelation time 5.7
    assert noise.estimable and correlated.estimable and correlated.value < noise.value / 2
    # a random walk has no autocorrelation time: its ESS sits at the estimator's floor, not reported
    walk = diagnostics.ess(rng.normal(size=(4, 40)).cumsum(axis=1))
    assert "shorter than their autocorrelation time" in walk.reason


def test_constant_functionals_single_chains_ties_and_the_cap_are_reported_with_their_reason():
    constant = np.full((4, 50), -3.5)
    assert diagnostics.ess(constant).reason == "constant functional"
    assert diagnostics.rhat(constant).reason == "constant functional"
    assert diagnostics.rhat(np.random.default_rng(0).normal(size=(1, 50))).reason == "needs >= 2 chains"
    assert diagnostics.rhat(np.random.default_rng(0).normal(size=(4, 3))).reason == "needs >= 4 draws per chain"
    # a length that is mostly at its maximum: the 95% quantile is the maximum, the tail indicator all ones
    lengths = np.where(np.random.default_rng(0).random((4, 50)) < 0.9, 16.0, 7.0)
    assert diagnostics.ess(lengths, "tail").reason.startswith("a 5% or 95% quantile")
    assert diagnostics.ess(lengths, "bulk").estimable
    # antithetic chains: the autocorrelation estimate falls to ArviZ's floor and ESS is its cap
    alternating = np.tile([1.0, -1.0], (4, 25)) + 1e-3 * np.random.default_rng(0).normal(size=(4, 50))
    assert "cap" in diagnostics.ess(alternating).reason


def test_summary_prints_na_with_reasons_and_flags_vehtari_limits():
    idata = diagnostics.to_inference_data(synthetic_run(ar1(0, 0.5, draws=8) + np.arange(4.0)[:, None]))
    table = diagnostics.summary(idata)
    assert table[["ess_bulk", "ess_tail", "ess_bulk_per_1k_tokens"]].isna().all().all()
    text = diagnostics.format_summary(table)
    assert "48.16" not in text and "n/a: log_target ess_bulk: needs >= 10 draws per chain" in text
    assert "warning: log_target R-hat" in text  # chains 1 apart: R-hat far above 1.01
    attribute = json.loads(idata.attrs["diagnostics"])["log_target"]
    assert attribute["ess_bulk"] is None and attribute["not_estimable"]["ess_bulk"] == "needs >= 10 draws per chain"
    assert attribute["r_hat"] > 1.01

    mixed = diagnostics.summary(diagnostics.to_inference_data(synthetic_run(ar1(0, 0.0, draws=400))))
    assert mixed.loc["log_target", "warnings"] == "" and mixed.loc["log_target", "not_estimable"] == ""
    short = diagnostics.summary(diagnostics.to_inference_data(synthetic_run(ar1(0, 0.5, draws=100))))
    assert "bulk ESS" in short.loc["log_target", "warnings"]  # about 400 draws / 3: estimable, far below 400


def test_netcdf_round_trip_keeps_everything(tmp_path):
    run = synthetic_run(ar1(0, 0.3, draws=20))
    texts = [[f"chain {c} draw {d} é" for d in range(20)] for c in range(4)]
    idata = diagnostics.to_inference_data(run, texts=texts, model="smollm2-135m", prompt="What is 2+2?")
    diagnostics.save(idata, tmp_path / "run.nc")
    loaded = diagnostics.load(tmp_path / "run.nc")
    assert diagnostics.settings(loaded) == run.settings
    assert loaded.attrs["prompt"] == "What is 2+2?"
    np.testing.assert_array_equal(loaded.completions["tokens"].values, run.tokens)
    np.testing.assert_array_equal(loaded.completions["entropy"].values, run.entropy)
    assert loaded.completions["text"].values[2, 5] == "chain 2 draw 5 é"
    for field in diagnostics.SAMPLE_STATS_FIELDS:
        np.testing.assert_array_equal(loaded.sample_stats[field].values, run.stats[field])
    np.testing.assert_allclose(loaded.posterior["log_p"].values, run.stats["log_target"] / 4.0)
    assert diagnostics.total_tokens(loaded) == 4 * 20 * 10 + 7
    np.testing.assert_allclose(diagnostics.acceptance_by_chain(loaded), run.stats["accepted"].mean(axis=1))


def test_answer_agreement_counts_chains_with_the_modal_answer():
    run = synthetic_run(ar1(0, 0.3, draws=3))
    texts = [["x", "x", "The answer is 4"], ["y", "y", "the answer is  4"], ["z", "z", "42"], ["w", "w", "4"]]
    idata = diagnostics.to_inference_data(run, texts=texts)
    assert diagnostics.answer_agreement(idata) == (0.25, "4")  # all four texts differ; a tie reports the smallest
    last_number = lambda text: text.split()[-1]
    assert diagnostics.answer_agreement(idata, extract=last_number) == (0.75, "4")


def test_without_text_chains_agree_when_their_last_completions_are_the_same_tokens():
    run = synthetic_run(ar1(0, 0.3, draws=3))
    run.tokens[:3, -1] = [5, 6, 7, 8, 9]
    run.stats["length"][:3, -1] = [2, 2, 3]  # chains 0 and 1 end in [5, 6], chain 2 in [5, 6, 7]
    run.stats["length"][3, -1] = 2
    run.tokens[3, -1, :2] = [5, 1]
    idata = diagnostics.to_inference_data(run)
    assert diagnostics.answer_agreement(idata) == (0.5, "5 6")
    with pytest.raises(ValueError, match="needs the completions' text"):
        diagnostics.answer_agreement(idata, extract=str)


def test_a_rewritten_markdown_report_keeps_only_its_own_figures(tmp_path):
    import matplotlib.pyplot as plt

    from ppl_ecmh.analysis.report import write_document

    table = [("numbers", ["n"], [["1"]])]
    write_document("two", table, [("a", plt.figure()), ("b", plt.figure())], tmp_path / "report.md", "md")
    write_document("one", table, [("a", plt.figure())], tmp_path / "report.md", "md")
    plt.close("all")
    assert [f.name for f in (tmp_path / "report_figures").iterdir()] == ["figure_00.png"]


def test_a_run_as_a_datatree_has_its_groups_opens_with_arviz_base_and_both_backends_agree(tmp_path, monkeypatch):
    """The next ArviZ's format: the same groups and attributes, written with to_netcdf and opened by
    arviz-base (as is the file `save` writes); arviz-stats and arviz 0.23 give the same table."""
    arviz_base = pytest.importorskip("arviz_base")
    pytest.importorskip("arviz_stats")
    idata = diagnostics.to_inference_data(synthetic_run(ar1(1, 0.5, draws=400)))
    tree = diagnostics.to_datatree(idata)
    assert set(tree.children) == {"posterior", "sample_stats", "completions"} and tree.attrs == idata.attrs
    tree.to_netcdf(tmp_path / "tree.nc", engine="h5netcdf")
    diagnostics.save(idata, tmp_path / "run.nc")
    for path in (tmp_path / "tree.nc", tmp_path / "run.nc"):
        opened = arviz_base.convert_to_datatree(str(path))
        np.testing.assert_array_equal(opened["posterior"]["log_target"].values, idata.posterior["log_target"].values)
        np.testing.assert_array_equal(opened["completions"]["tokens"].values, idata.completions["tokens"].values)
    tables = {}
    for backend in ("arviz", "arviz-stats"):
        monkeypatch.setattr(diagnostics, "BACKEND", backend)
        tables[backend] = diagnostics.summary(idata)
    assert tables["arviz"].equals(tables["arviz-stats"]), tables
    assert np.isfinite(tables["arviz"].loc["log_target", "ess_tail"])
