"""Power-SMC and compute-matched best-of-N through the sampler interface; best-of-N's budget."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_ecmh.analysis import diagnostics
from ppl_ecmh.lm import generation, toy
from ppl_ecmh.runner import SamplerSpec, run_sampler
from tests import lockstep

PROBLEM = toy.random_tree_problem(seed=1)


def best_of_n(budgets, seed=0):
    rows = len(budgets)
    seqs = generation.new_sequences([PROBLEM.prompt] * rows, PROBLEM.max_new_tokens)
    state = generation.Generated(seqs, generation.prefill(PROBLEM.lm, seqs))
    limit = jnp.full(rows, PROBLEM.max_new_tokens, jnp.int32)
    return lockstep.best_of_n(jax.random.key(seed), state, PROBLEM.lm, tau=1.0, budget=jnp.asarray(budgets), limit=limit)


def test_best_of_n_never_exceeds_its_token_budget():
    budgets = np.tile(np.arange(1, 25), 50)
    best, spent = best_of_n(budgets)
    spent = np.asarray(spent)
    assert np.all(spent <= budgets)
    assert np.all(spent > budgets - PROBLEM.max_new_tokens)  # it stops only when the next draw would not fit
    assert np.all(np.asarray(best.seqs.length) >= 1)


def test_a_larger_budget_selects_likelier_completions():
    small, _ = best_of_n(np.full(400, PROBLEM.max_new_tokens))
    large, _ = best_of_n(np.full(400, 12 * PROBLEM.max_new_tokens))
    assert float(generation.mean_log_likelihood(large.seqs).mean()) > float(generation.mean_log_likelihood(small.seqs).mean()) + 0.1


def test_best_of_n_sampler_reports_its_spend_and_refuses_no_budget():
    run = run_sampler(PROBLEM.lm, PROBLEM.prompt, SamplerSpec("best-of-n", bon_budget=9), alpha=4.0,
                      max_new_tokens=4, num_chains=3, num_draws=2, progress=False)
    assert np.all(run.stats["num_generated"] <= 9) and run.settings["bon_budget"] == 9
    with pytest.raises(ValueError, match="bon_budget"):
        SamplerSpec("best-of-n").make_kernel()


def test_power_smc_sampler_exposes_weights_and_ess_per_step_in_inference_data():
    run = run_sampler(PROBLEM.lm, PROBLEM.prompt, SamplerSpec("power-smc", num_particles=8), alpha=2.0,
                      max_new_tokens=4, num_chains=2, num_draws=3, progress=False)
    idata = diagnostics.to_inference_data(run)
    stats = idata.sample_stats
    assert stats["smc_ess"].dims == ("chain", "draw", "smc_step") and stats.sizes["smc_step"] == 4
    assert stats["smc_log_weights"].dims == ("chain", "draw", "particle") and stats.sizes["particle"] == 8
    np.testing.assert_allclose(np.exp(stats["smc_log_weights"].values).sum(-1), 1.0, rtol=1e-5)
    assert np.all(stats["num_generated"].values >= 8)  # every particle decodes
    assert run.settings["num_particles"] == 8


@pytest.mark.parametrize("name", ["power-smc", "tmc"])
def test_population_kernels_run_under_numpyros_mcmc_with_chains_of_their_own(name):
    """Keyed by work, their state holds a key per (chain, prompt): NumPyro's MCMC still runs them,
    sequential or vectorized, and its chains draw from different keys; recorded with
    RECORDED_FIELDS, a run becomes the library's Run, without a last MH step."""
    from numpyro.infer import MCMC

    from ppl_ecmh import RECORDED_FIELDS, power_model, run_of_mcmc

    kernel = SamplerSpec(name, num_particles=4, num_candidates=2, num_rollouts=2, horizon=1).make_kernel(power_model)
    for chains, method in ((1, "sequential"), (4, "vectorized")):
        mcmc = MCMC(kernel, num_warmup=0, num_samples=6, num_chains=chains, chain_method=method, progress_bar=False)
        mcmc.run(jax.random.PRNGKey(0), PROBLEM.lm, [PROBLEM.prompt] * 2, alpha=2.0,
                 max_new_tokens=PROBLEM.max_new_tokens, extra_fields=RECORDED_FIELDS)
        draws = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
        assert draws.shape == (chains, 6, 2, PROBLEM.max_new_tokens)
        recorded = run_of_mcmc(mcmc)
        assert recorded.last_step is None and recorded.stats["log_target"].shape == (chains, 6, 2)
    assert len({draws[chain].tobytes() for chain in range(4)}) == 4
    assert not np.array_equal(draws[:, :, 0], draws[:, :, 1])  # two prompts of one batch draw apart too
