"""The decision-point family and the exact chain on its decision tuples: held against the closed
form of pi_alpha, against detailed balance, and against the engine running the model."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ppl_ecmh.evaluation import decision_points as exact
from ppl_ecmh.lm.decision_points import DecisionPoints
from ppl_ecmh.registry import SamplerSpec
from ppl_ecmh.runner import run_sampler
from ppl_ecmh.samplers.cuts import get_cut

ALPHA = 4.0
CUTS = ["uniform", "entropy", "entropy_jump", "mixture"]
# three branches, consequence windows that overlap the next decision, a distractor spike
RICH = DecisionPoints(20, (2, 7, 15), branch_probs=(0.5, 0.3, 0.2), noise=(0.2, 0.01, 0.05, 0.03), consequence=6,
                      distractors=(11,), vocab_size=7)


def closed_form(model: DecisionPoints, alpha: float) -> np.ndarray:
    """pi_alpha of every decision tuple, from the module's formula, written out position by
    position: q(b_j)^alpha at decisions, f(eps) = (1 - eps)^alpha + (V - 1)^(1 - alpha) eps^alpha at
    fillers (eps of the branch within `consequence` of its decision, else the base), V^(1 - alpha)
    at distractors."""
    words, weights = model.vocab_size, []
    for branches in itertools.product(range(model.num_branches), repeat=len(model.positions)):
        log_weight, last, branch = 0.0, None, None
        for t in range(model.length):
            if t in model.positions:
                branch, last = branches[model.positions.index(t)], t
                log_weight += alpha * np.log(model.branch_probs[branch])
            elif t in model.distractors:
                log_weight += (1 - alpha) * np.log(words)
            else:
                eps = model.noise[branch] if last is not None and t - last <= model.consequence else model.noise[-1]
                log_weight += np.log((1 - eps) ** alpha + (words - 1) ** (1 - alpha) * eps**alpha)
        weights.append(log_weight)
    weights = np.array(weights)
    return np.exp(weights - np.logaddexp.reduce(weights))


@pytest.mark.parametrize("cut", CUTS)
def test_the_exact_chain_is_a_kernel_that_keeps_pi_alpha_in_closed_form(cut):
    chain = exact.exact_chain(RICH, get_cut(cut), ALPHA)
    assert np.all(chain.kernel >= 0) and np.allclose(chain.kernel.sum(1), 1, atol=1e-12)
    np.testing.assert_allclose(chain.target, closed_form(RICH, ALPHA), rtol=1e-9)
    np.testing.assert_allclose(chain.target @ chain.kernel, chain.target, atol=1e-12)
    assert np.allclose(chain.cut_mass.sum(1), 1) and np.all(chain.cost <= RICH.length)


def test_without_the_cut_ratio_the_chain_leaves_pi_alpha_but_a_uniform_cut_needs_none():
    wrong = exact.exact_chain(RICH, get_cut("entropy_jump"), ALPHA, drop_cut_ratio=True)
    assert np.abs(wrong.target @ wrong.kernel - wrong.target).sum() > 1e-3
    uniform = [exact.exact_chain(RICH, get_cut("uniform"), ALPHA, drop_cut_ratio=drop).kernel for drop in (False, True)]
    np.testing.assert_allclose(*uniform, atol=1e-14)


def test_the_autocorrelation_time_of_a_two_state_chain_is_its_closed_form():
    a, b = 0.1, 0.3
    kernel = np.array([[1 - a, a], [b, 1 - b]])
    chain = exact.Chain(kernel, np.array([b, a]) / (a + b), np.ones(2), np.ones((2, 1)))
    flip = 1 - a - b  # the second eigenvalue: rho_k = flip^k
    assert exact.integrated_autocorrelation_time(chain, np.array([0.0, 1.0])) == pytest.approx((1 + flip) / (1 - flip))


def test_binary_lifting_finds_the_first_step_the_walk_finds():
    model = DecisionPoints(48, (5, 20, 40))
    for cut in ("uniform", "entropy_jump"):
        chain = exact.exact_chain(model, get_cut(cut), ALPHA)
        distances, tokens = exact.distance_path(chain, 0, 5000)
        first = int(np.argmax(distances <= 0.1))
        assert distances[first] <= 0.1 < distances[first - 1]
        assert exact.steps_to_distance(chain, 0) == (first, pytest.approx(tokens[first], rel=1e-9))


@pytest.mark.slow
def test_the_engine_running_the_model_draws_the_law_the_exact_chain_gives():
    """Many chains of the real sampler (the engine, entropy-jump cut) on the model: the decision
    tuples at each draw follow mu_0 K^n, where mu_0 is the initial completion's law; at two seeds.
    The same test rejects the kernel without its cut ratio (TV 0.12 from the right law at draw 4)."""
    model = DecisionPoints(12, (2, 6, 9), vocab_size=6, noise=(0.2, 0.01, 0.05))
    right, wrong = (exact.exact_chain(model, get_cut("entropy_jump"), ALPHA, drop_cut_ratio=drop) for drop in (False, True))
    initial = np.exp(exact.decision_log_proposals(model, ALPHA).sum(1))  # the initial completion's law
    spec = SamplerSpec("entropy-cut", cut="entropy_jump")
    for seed in (0, 1):
        run = run_sampler(model.lm(), [0], spec, alpha=ALPHA, max_new_tokens=model.length, num_chains=1500, num_draws=4,
                          seed=seed, progress=False, width=256)
        drawn = model.tuple_index(model.decisions_of(np.asarray(run.tokens)))
        law, wrong_law = initial, initial
        for draw in range(4):
            law, wrong_law = law @ right.kernel, wrong_law @ wrong.kernel
            counts = np.bincount(drawn[:, draw], minlength=len(law))
            assert stats.chisquare(counts, law * counts.sum()).pvalue > 1e-3, (seed, draw)
        assert stats.chisquare(counts, wrong_law * counts.sum()).pvalue < 1e-6, seed


def test_the_committed_synthetic_study_rederives_from_the_code():
    """The rows of results/decision-points/synthetic.json with T <= 128, computed again. The
    chain's inputs are the library's float32 entropies, whose last bits differ between XLA versions
    (1.5e-6 relative on JAX 0.10.0 against 0.10.2, make test-compat): floats agree to 1e-5, about
    80 float32 ulps, and whole numbers (steps to TV 0.1) exactly."""
    from benchmarks import decision_points as study

    committed = json.loads((Path(study.__file__).resolve().parents[1] / study.OUT / "synthetic.json").read_text())
    for name, knobs, model in study.models(small=True):
        if name != "length" or knobs["length"] > 128:
            continue
        for row in study.rows_of(name, knobs, model):
            [stored] = [r for r in committed["rows"] if all(r.get(key) == row[key] for key in (*knobs, "map", "cut"))]
            for key, value in row.items():
                assert stored[key] == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value), (knobs, key)


def test_the_committed_best_of_n_seeds_summary_rederives_from_the_committed_outcomes():
    from benchmarks import best_of_n_seeds as seeds
    from ppl_ecmh.evaluation import RecordStore

    root = Path(seeds.__file__).resolve().parents[1]
    committed = json.loads((root / seeds.OUT / "summary.json").read_text())
    derived = seeds.study_summary(RecordStore(root / seeds.OUT / seeds.OUTCOMES).read())
    assert json.loads(json.dumps(derived)) == committed
