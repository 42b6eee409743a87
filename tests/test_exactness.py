"""DESIGN section 4: every kernel leaves pi_alpha invariant, and the test can tell a wrong kernel.

Chains start at exact pi_alpha draws (so an invariant kernel keeps producing exact draws whatever
its mixing) and run several steps; the final draws are compared with the enumerated pi_alpha by
total variation (against a simulated Monte-Carlo bound) and a chi-square test.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_ecmh import baselines, blockwise, cuts, mh
from ppl_ecmh.lm import generation, toy
from tests.exact import Comparison, chains_from_exact, exact_draws, final_draws

ALPHAS = [1.0, 2.0, 4.0]
CUTS = {
    "uniform": cuts.Uniform(),
    "entropy": cuts.Entropy(beta=0.5),
    "entropy_jump": cuts.EntropyJump(power=4.0),
    "mixture": cuts.Mixture(cuts.EntropyJump(power=4.0), eps=0.2),
}
# a random tree whose entropy profile jumps, so every cut's correction term matters
PROBLEM = toy.random_tree_problem(seed=1)


def mh_step(cut, drop_cut_ratio=False):
    def step(key, state, lm, alpha, limit):
        return mh.suffix_mh_step(
            key, state, lm, cut=cut, alpha=alpha, tau=1.0 / alpha, limit=limit, drop_cut_ratio=drop_cut_ratio
        )

    return step


@functools.cache
def cached_step(cut_name, drop_cut_ratio=False):
    return mh_step(CUTS[cut_name], drop_cut_ratio)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("cut_name", list(CUTS))
def test_suffix_mh_leaves_power_distribution_invariant(cut_name, alpha):
    draws, pi, acceptance = chains_from_exact(PROBLEM, alpha, cached_step(cut_name))
    comparison = Comparison(draws, pi)
    assert comparison.consistent(), f"{cut_name} alpha={alpha}: {comparison}"
    assert 0.05 < acceptance < 1.0  # the chains moved


@pytest.mark.slow
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("cut_name", list(CUTS))
def test_kernel_without_cut_ratio_is_rejected(cut_name, alpha):
    draws, pi, _ = chains_from_exact(PROBLEM, alpha, cached_step(cut_name, drop_cut_ratio=True))
    comparison = Comparison(draws, pi)
    assert not comparison.consistent(), f"wrong kernel passed: {cut_name} alpha={alpha}: {comparison}"


def independent(tau_of_alpha):
    def step(key, state, lm, alpha, limit):
        return baselines.independent_step(key, state, lm, tau=tau_of_alpha(alpha), alpha=alpha, limit=limit)

    return step


ANCESTRAL = independent(lambda alpha: 1.0)
LOW_TEMPERATURE = independent(lambda alpha: 1.0 / alpha)


@pytest.mark.slow
def test_ancestral_sampling_is_exact_at_alpha_one():
    draws, pi, _ = chains_from_exact(PROBLEM, 1.0, ANCESTRAL)
    assert Comparison(draws, pi).consistent()


@pytest.mark.slow
@pytest.mark.parametrize("problem", [PROBLEM, toy.pivotal_problem()], ids=["random_tree", "pivotal"])
@pytest.mark.parametrize("alpha", [2.0, 4.0])
def test_low_temperature_sampling_is_not_the_power_distribution(problem, alpha):
    draws, pi, _ = chains_from_exact(problem, alpha, LOW_TEMPERATURE)
    comparison = Comparison(draws, pi)
    assert not comparison.consistent(), comparison


def test_pivotal_example_power_and_low_temperature_disagree():
    """"b" is the likelier first token, yet "a b" is the likeliest completion and pi_4 favours it."""
    problem = toy.pivotal_problem()
    a, b, eos = 1, 2, 4
    pi4 = problem.power_distribution(4.0)
    assert max(pi4, key=pi4.get) == (a, b, eos)
    assert sum(p for x, p in pi4.items() if x[0] == a) > 0.8  # exactly 0.819
    # per-token temperature 1/4 puts the first token on "b" with probability 0.6^4 / (0.6^4 + 0.4^4)
    assert 0.6**4 / (0.6**4 + 0.4**4) > 0.8  # 0.835


def run_blockwise(cut, alpha, stop_at_eos, num_steps, num_chains=4000):
    seqs = generation.new_sequences([PROBLEM.prompt] * num_chains, PROBLEM.max_new_tokens)
    state = mh.SuffixMHState(seqs, generation.prefill(PROBLEM.lm, seqs))
    run = jax.jit(
        functools.partial(
            blockwise.blockwise_sample, cut=cut, alpha=alpha, tau=1 / alpha, block_size=2, num_mcmc_steps=num_steps,
            stop_at_eos=stop_at_eos,
        )
    )
    final, info = run(jax.random.key(3), state, PROBLEM.lm)
    assert info.mh.accepted.shape == (2, num_steps, num_chains)
    return Comparison(final_draws(final.seqs), PROBLEM.power_distribution(alpha))


@pytest.mark.slow
@pytest.mark.parametrize("cut_name", ["uniform", "entropy_jump"])
def test_blockwise_schedule_final_stage_reaches_power_distribution(cut_name):
    """The whole schedule from the prompt (B=2, T=4) with ended rows kept in the MH steps: the
    final stage is an MH chain on pi_alpha, and 100 steps bring it there (the entropy-jump cut mixes
    slower on this toy: after 25 steps its TV is still about 0.11, the uniform cut's 0.03)."""
    comparison = run_blockwise(CUTS[cut_name], 2.0, stop_at_eos=False, num_steps=100)
    assert comparison.consistent(), comparison


@pytest.mark.slow
def test_published_early_stop_at_eos_is_not_exact():
    """The published recipe's early stop leaves rows on an intermediate target: measurably biased."""
    comparison = run_blockwise(CUTS["uniform"], 2.0, stop_at_eos=True, num_steps=100)
    assert not comparison.consistent(), comparison


@pytest.mark.slow
def test_entropy_cut_puts_cuts_at_high_entropy_positions():
    """Mean entropy H_{t+1} at the chosen cut: the entropy cut's exceeds the uniform cut's."""
    completions, _ = exact_draws(PROBLEM, 2.0, 4000, seed=7)
    seqs = generation.new_sequences([PROBLEM.prompt] * 4000, PROBLEM.max_new_tokens)
    state = mh.init_from_completions(PROBLEM.lm, seqs, completions, 0.5)
    entropy = np.asarray(state.seqs.entropy)
    means = {}
    for name in ["uniform", "entropy", "entropy_jump"]:
        logq = mh.cut_log_probs(CUTS[name], state.seqs)
        t = np.asarray(jax.random.categorical(jax.random.key(0), logq))
        means[name] = entropy[np.arange(4000), t].mean()
    assert means["entropy"] > means["uniform"] + 0.1, means
    assert means["entropy_jump"] > means["uniform"] + 0.1, means


def test_tv_bound_and_chi_square_accept_exact_draws():
    """The comparison itself: exact iid draws pass it (so failures above are the kernels')."""
    pi = PROBLEM.power_distribution(2.0)
    support = list(pi)
    picks = np.random.default_rng(0).choice(len(support), size=4000, p=[pi[x] for x in support])
    assert Comparison([support[i] for i in picks], pi).consistent()


def test_cut_ratio_is_exact_for_uniform_cut():
    """With the uniform cut, log q_cut(t|x') - log q_cut(t|x) = log n - log n'."""
    seqs = generation.Sequences(
        tokens=jnp.zeros((2, 6), jnp.int32),
        prompt_length=jnp.ones(2, jnp.int32),
        length=jnp.array([2, 5], jnp.int32),
        logp=jnp.zeros((2, 5)),
        logq=jnp.zeros((2, 5)),
        entropy=jnp.zeros((2, 5)),
    )
    proposed = seqs._replace(length=jnp.array([4, 1], jnp.int32))
    log_a = mh.log_acceptance(seqs, proposed, jnp.array([1, 0]), cuts.Uniform(), 2.0)
    np.testing.assert_allclose(log_a, [np.log(2) - np.log(4), np.log(5) - np.log(1)], rtol=1e-6)


def top_k_problem(problem, k):
    """The toy problem under top-k truncation: the model and its exact enumeration both truncated."""
    from ppl_ecmh.lm.truncation import TopK

    def truncated_logits(context):
        logits = np.asarray(problem.next_logits(context), np.float64)
        kth = np.sort(logits)[-k]
        return np.where(logits >= kth, logits, -np.inf)

    return dataclasses.replace(problem, lm=TopK(problem.lm, k), next_logits=truncated_logits)


@pytest.mark.slow
def test_top_k_truncation_samples_the_truncated_power_distribution_exactly():
    truncated = top_k_problem(PROBLEM, k=2)
    support = {x for x, p in truncated.power_distribution(4.0).items() if p > 0}
    assert len(support) < len(PROBLEM.power_distribution(4.0))  # truncation removed completions
    draws, pi, acceptance = chains_from_exact(truncated, 4.0, cached_step("entropy_jump"))
    comparison = Comparison(draws, pi)
    assert comparison.consistent(), comparison
    assert acceptance > 0.05
    # the untruncated kernel run from the same exact draws leaves the truncated support
    untruncated = dataclasses.replace(truncated, lm=PROBLEM.lm)
    escaped, _, _ = chains_from_exact(untruncated, 4.0, cached_step("entropy_jump"))
    assert set(escaped) - support
