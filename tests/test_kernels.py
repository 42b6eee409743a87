"""The NumPyro layer: the power model, its log density, and the MCMCKernel adapters."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer import MCMC
from numpyro.infer.util import log_density

from ppl_ecmh.lm import spans, toy, transformer
from ppl_ecmh.numpyro import kernels
from ppl_ecmh.numpyro.target import LanguageModelSequence, find_power_target, power_model
from ppl_ecmh.analysis import diagnostics
from ppl_ecmh.engine.slots import STAT_FIELDS
from ppl_ecmh.runner import RECORDED_FIELDS, SamplerSpec, run_of_mcmc, run_sampler
from tests.exact import Comparison, assert_exact_at_every_seed, exact_draws
from tests.parallel_check import tiny_model

PROBLEM = toy.random_tree_problem(seed=1)
KERNELS = {
    "random_cut": kernels.RandomCutMH,
    "entropy_cut": kernels.EntropyCutMH,
    "blockwise": lambda model: kernels.BlockwiseMH(model, cut="entropy_jump", block_size=2, num_mcmc_steps=3),
    "ancestral": kernels.AncestralSampler,
    "low_temperature": kernels.LowTemperatureSampler,
}


def run(kernel, alpha=2.0, num_chains=4, num_samples=6, seed=0, **kwargs):
    mcmc = MCMC(kernel, num_warmup=2, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), PROBLEM.lm, PROBLEM.prompt, alpha=alpha, max_new_tokens=4,
             extra_fields=RECORDED_FIELDS, **kwargs)
    return mcmc


def test_sequence_distribution_log_prob_is_exact_log_p():
    sequence = LanguageModelSequence(PROBLEM.lm, PROBLEM.prompt, 4)
    completions = PROBLEM.completions()[:20]
    values = np.full((len(completions), 4), 3, np.int32)
    for row, (x, _) in enumerate(completions):
        values[row, : len(x)] = x
    np.testing.assert_allclose(sequence.log_prob(values), [lp for _, lp in completions], atol=1e-5)


def test_model_density_is_p_to_the_alpha():
    x, log_p = PROBLEM.completions()[5]
    value = jnp.asarray(list(x) + [3] * (4 - len(x)))
    density, _ = log_density(power_model, (PROBLEM.lm, PROBLEM.prompt), dict(alpha=3.0, max_new_tokens=4), {"x": value})
    assert math.isclose(float(density), 3.0 * log_p, rel_tol=1e-5)


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_log_target_equals_numpyro_log_density(name):
    mcmc = run(KERNELS[name](power_model), alpha=2.5)
    draws = mcmc.get_samples()["x"]
    tracked = mcmc.get_extra_fields()["log_target"]
    model_kwargs = dict(alpha=2.5, max_new_tokens=4)
    for draw, fast in zip(draws[:8], tracked[:8]):
        exact, _ = log_density(power_model, (PROBLEM.lm, PROBLEM.prompt), model_kwargs, {"x": draw})
        assert abs(float(exact) - float(fast)) < 1e-4


@pytest.mark.parametrize("name", list(KERNELS))
def test_vectorized_chains_give_token_arrays_and_per_step_info(name):
    mcmc = run(KERNELS[name](power_model))
    samples = mcmc.get_samples(group_by_chain=True)
    assert samples["x"].shape == (4, 6, 4) and samples["x"].dtype == jnp.int32
    extra = mcmc.get_extra_fields(group_by_chain=True)
    for field in STAT_FIELDS:
        assert extra[field].shape == (4, 6), field
    assert np.all((extra["accept_prob"] >= 0) & (extra["accept_prob"] <= 1))
    mcmc.print_summary()
    idata = diagnostics.to_inference_data(run_of_mcmc(mcmc))  # the library's record of the run
    np.testing.assert_array_equal(idata.completions["tokens"].values, samples["x"])
    np.testing.assert_array_equal(idata.posterior["log_target"].values, extra["log_target"])
    assert diagnostics.total_tokens(idata) == int(extra["num_generated"].sum())


def test_single_chain_without_vectorization():
    mcmc = MCMC(kernels.EntropyCutMH(power_model), num_warmup=1, num_samples=3, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1), PROBLEM.lm, PROBLEM.prompt, alpha=2.0, max_new_tokens=4, extra_fields=("cut",))
    assert mcmc.get_samples()["x"].shape == (3, 4)
    assert mcmc.get_extra_fields()["cut"].shape == (3,)


def test_same_seed_same_draws_different_seed_different_draws():
    first = run(kernels.EntropyCutMH(power_model), seed=5).get_samples()["x"]
    again = run(kernels.EntropyCutMH(power_model), seed=5).get_samples()["x"]
    other = run(kernels.EntropyCutMH(power_model), seed=6).get_samples()["x"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_init_params_start_the_chains_there():
    start = jnp.asarray([[1, 3, 3, 3]] * 4, jnp.int32)
    mcmc = MCMC(kernels.RandomCutMH(power_model), num_warmup=0, num_samples=1, num_chains=4,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), PROBLEM.lm, PROBLEM.prompt, alpha=2.0, max_new_tokens=4,
             init_params={"x": start}, extra_fields=("old_suffix_length", "cut"))
    extra = mcmc.get_extra_fields()
    # the first step cut a 2-token completion ("1 EOS"): the old suffix is 2 - cut
    np.testing.assert_array_equal(extra["old_suffix_length"], 2 - extra["cut"])


def final_numpyro_draws(mcmc) -> list[tuple[int, ...]]:
    """Each chain's last draw, cut at its first EOS."""
    rows = np.asarray(mcmc.get_samples(group_by_chain=True)["x"][:, -1])
    return [tuple(int(t) for t in row[: list(row).index(3) + 1]) if 3 in row else tuple(int(t) for t in row)
            for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_draw", [1, 5])
def test_entropy_cut_kernel_draws_match_power_distribution(steps_per_draw):
    """Through NumPyro end to end: 2000 vectorized chains from the proposal, their last draw after
    150 MH steps (the entropy cut mixes slowly on this toy: after 40 steps chi-square p is 0.005),
    at every seed; with `steps_per_draw` 5 the chains take those steps asynchronously, 5 a draw."""
    def run(seed):
        mcmc = MCMC(kernels.EntropyCutMH(power_model, steps_per_draw=steps_per_draw), num_warmup=150 // steps_per_draw - 1,
                    num_samples=1, num_chains=2000, chain_method="vectorized", progress_bar=False)
        mcmc.run(jax.random.PRNGKey(seed), PROBLEM.lm, PROBLEM.prompt, alpha=2.0, max_new_tokens=4)
        return Comparison(final_numpyro_draws(mcmc), PROBLEM.power_distribution(2.0))

    assert_exact_at_every_seed(run, f"steps_per_draw={steps_per_draw}")


@pytest.mark.parametrize("kernel", [kernels.RandomCutMH, kernels.EntropyCutMH])
def test_thinned_draws_are_their_steps_and_score_as_the_model_does(kernel):
    """A draw of k steps per draw records the k steps' statistics, and the cache the rows leave
    behind after rejections agrees with their state: later draws still score as the model does."""
    mcmc = run(kernel(power_model, steps_per_draw=4), alpha=2.5)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    moved = extra["new_suffix_length"]
    np.testing.assert_array_equal(extra["num_generated"], moved)
    assert np.all(np.isin(np.asarray(extra["accepted"]) * 4, [0, 1, 2, 3, 4]))
    draws = mcmc.get_samples(group_by_chain=True)["x"]
    for chain in range(4):
        for draw in range(6):
            exact, _ = log_density(power_model, (PROBLEM.lm, PROBLEM.prompt), dict(alpha=2.5, max_new_tokens=4),
                                   {"x": draws[chain, draw]})
            assert abs(float(exact) - float(extra["log_target"][chain, draw])) < 1e-4
    with pytest.raises(ValueError, match="steps_per_draw"):
        kernel(power_model, steps_per_draw=0)


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=99), "max_new_tokens"),  # beyond the toy model's context
    ],
)
def test_bad_model_parameters_name_the_parameter(kwargs, parameter):
    arguments = dict(alpha=2.0, max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=parameter):
        find_power_target(power_model, (PROBLEM.lm, PROBLEM.prompt), arguments)


def test_finding_the_target_traces_the_sharpen_factor_instead_of_scoring_with_the_model(monkeypatch):
    from ppl_ecmh.numpyro import target

    scored = []  # whether each scoring call got concrete tokens, i.e. really ran the model
    score = target._score
    monkeypatch.setattr(target, "_score", lambda lm, seqs, completions: (
        scored.append(not isinstance(completions, jax.core.Tracer)) or score(lm, seqs, completions)))
    found = find_power_target(power_model, (PROBLEM.lm, PROBLEM.prompt), dict(alpha=2.0, max_new_tokens=4))
    assert scored == [False]
    assert (found.site, found.alpha, found.max_new_tokens, found.lm) == ("x", 2.0, 4, PROBLEM.lm)


def test_empty_prompt_is_rejected():
    with pytest.raises(ValueError, match="prompt"):
        find_power_target(power_model, (PROBLEM.lm, ()), dict(alpha=2.0, max_new_tokens=4))


@pytest.mark.parametrize(
    "make, parameter",
    [
        (lambda: kernels.RandomCutMH(power_model, tau=0.0), "tau"),
        (lambda: kernels.RandomCutMH(power_model, tau=-1.0), "tau"),
        (lambda: kernels.BlockwiseMH(power_model, block_size=0), "block_size"),
        (lambda: kernels.BlockwiseMH(power_model, num_mcmc_steps=-1), "num_mcmc_steps"),
        (lambda: kernels.SuffixMH(power_model, cut="entropy", beta=0.0), "beta"),
        (lambda: kernels.SuffixMH(power_model, cut="nonsense"), "cut"),
    ],
)
def test_bad_kernel_parameters_name_the_parameter(make, parameter):
    with pytest.raises(ValueError, match=parameter):
        run(make())


def test_models_of_another_form_are_refused_clearly():
    def two_sites(lm, prompt, alpha, max_new_tokens):
        power_model(lm, prompt, alpha, max_new_tokens)
        numpyro.sample("extra", numpyro.distributions.Normal())

    with pytest.raises(ValueError, match="LanguageModelSequence"):
        run(kernels.RandomCutMH(two_sites))


@pytest.mark.slow
def test_kernel_log_target_equals_log_density_on_the_embedded_model(smollm):
    """On a transformer's KV cache too, with 3 steps a draw: after the rows restored what their
    rejections overwrote (one step a draw is the same check on the toy models above)."""
    prompt = smollm.encode("What is 3 + 4?", chat=True)
    mcmc = MCMC(kernels.EntropyCutMH(power_model, steps_per_draw=3), num_warmup=0, num_samples=2, num_chains=2,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), smollm.lm, prompt, alpha=4.0, max_new_tokens=16, extra_fields=("log_target",))
    draws, tracked = mcmc.get_samples()["x"], mcmc.get_extra_fields()["log_target"]
    for draw, fast in zip(draws, tracked):
        exact, _ = log_density(power_model, (smollm.lm, prompt), dict(alpha=4.0, max_new_tokens=16), {"x": draw})
        assert abs(float(exact) - float(fast)) < 1e-3 * max(1.0, abs(float(exact)))


def test_a_batch_of_prompts_samples_each_prompts_own_power_target():
    """Problems batched through the model (as in an evaluation) are independent targets: each
    prompt's column of draws keeps its own exact pi_alpha, so rows are not mixed up."""
    first = toy.markov_problem(seed=3)
    second = dataclasses.replace(first, prompt=(1,))
    alpha, chains = 2.0, 3000
    pis = [problem.power_distribution(alpha) for problem in (first, second)]
    assert pis[0] != pis[1]
    kernel = kernels.EntropyCutMH(power_model)
    step = jax.jit(lambda state: kernel.sample(state, (), {}))

    @functools.cache
    def after_six_steps(seed):
        start = jnp.stack([exact_draws(problem, alpha, chains, 2 * seed + index)[0]
                           for index, problem in enumerate((first, second))], 1)
        state = kernel.init(jax.random.split(jax.random.PRNGKey(seed), chains), 0, {"x": start},
                            (first.lm, [first.prompt, second.prompt]), dict(alpha=alpha, max_new_tokens=first.max_new_tokens))
        for _ in range(6):
            state = step(state)
        assert state.z["x"].shape == (chains, 2, first.max_new_tokens)
        return np.asarray(state.z["x"]), np.asarray(state.length)

    for column in range(2):
        def run(seed):
            tokens, lengths = (a[:, column] for a in after_six_steps(seed))
            return Comparison([tuple(int(t) for t in tokens[row, : lengths[row]]) for row in range(chains)], pis[column])
        assert_exact_at_every_seed(run, f"prompt {column}")


@pytest.mark.parametrize("preset, cut", [("karan-du", "Uniform()"), ("ecmh", "EntropyJump(power=4.0, floor=0.0)")])
def test_presets_fix_their_cut_and_runs_record_preset_and_truncation(preset, cut):
    spec = SamplerSpec(preset, cut="entropy", block_size=2, num_mcmc_steps=2, top_k=3)  # the preset's cut wins
    run = run_sampler(PROBLEM.lm, PROBLEM.prompt, spec, alpha=4.0, max_new_tokens=4, num_chains=2, num_draws=3,
                      progress=False)
    assert run.settings["preset"] == preset and run.settings["top_k"] == 3 and run.settings["cut"] == cut
    assert run.settings["block_size"] == 2 and run.settings["num_mcmc_steps"] == 2
    exact = run_sampler(PROBLEM.lm, PROBLEM.prompt, SamplerSpec("entropy-cut"), alpha=4.0, max_new_tokens=4,
                        num_chains=2, num_draws=1, progress=False)
    assert exact.settings["preset"] is None and exact.settings["top_k"] is None


def test_a_draw_hands_back_the_model_weights_instead_of_copying_them():
    """The runner's state carries the weights; were they an output of the compiled step, every draw
    would allocate a fresh copy of the whole model (2.5 GB per draw for the 0.5B model)."""
    from ppl_ecmh.runner import _kernel_and_step

    kernel, step = _kernel_and_step(SamplerSpec("entropy-cut"), 4.0, 4)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    state = kernel.init(keys, 0, None, (PROBLEM.lm, PROBLEM.prompt), dict(alpha=4.0, max_new_tokens=4))
    after = step(step(state))
    before_leaves, after_leaves = jax.tree_util.tree_leaves(state.lm), jax.tree_util.tree_leaves(after.lm)
    assert [a.unsafe_buffer_pointer() for a in after_leaves] == [b.unsafe_buffer_pointer() for b in before_leaves]


def test_block_wise_stage_draws_score_as_the_prefixes_the_kernel_targets():
    """Without warmup the first draw of a block-wise chain is a stage draw: a completion capped at
    the block (B=2 of T=4), often without EOS. It is padded with UNFINISHED, so the model's log
    density scores the prefix, as the kernel's log_target does, instead of that prefix plus EOS."""
    from ppl_ecmh.lm.generation import UNFINISHED

    mcmc = MCMC(KERNELS["blockwise"](power_model), num_warmup=0, num_samples=3, num_chains=16,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), PROBLEM.lm, PROBLEM.prompt, alpha=2.5, max_new_tokens=4, extra_fields=STAT_FIELDS)
    draws, tracked = mcmc.get_samples(group_by_chain=True)["x"], mcmc.get_extra_fields(group_by_chain=True)["log_target"]
    stage = np.asarray(draws[:, 0])
    assert (stage[:, 2:] == UNFINISHED).any() and not (draws[:, -1] == UNFINISHED).any()
    for chain in range(16):
        for draw in range(3):
            exact, _ = log_density(power_model, (PROBLEM.lm, PROBLEM.prompt), dict(alpha=2.5, max_new_tokens=4),
                                   {"x": draws[chain, draw]})
            assert abs(float(exact) - float(tracked[chain, draw])) < 1e-4, (chain, draw)


def test_block_wise_runs_discard_their_stages_by_default():
    from ppl_ecmh.lm.generation import UNFINISHED
    spec = SamplerSpec("blockwise", block_size=1, num_mcmc_steps=2)  # 4 stages of one token
    run = run_sampler(PROBLEM.lm, PROBLEM.prompt, spec, alpha=2.0, max_new_tokens=4, num_chains=3, num_draws=2,
                      progress=False)
    assert run.settings["num_warmup"] == 3 and run.tokens.shape[1] == 2 and not (run.tokens == UNFINISHED).any()
    staged = run_sampler(PROBLEM.lm, PROBLEM.prompt, spec, alpha=2.0, max_new_tokens=4, num_chains=3, num_draws=2,
                         num_warmup=0, progress=False)
    assert (staged.stats["length"][:, 0] <= 1).all()  # the first stage's draws are one token long
    assert ((staged.tokens[:, 0, 1:] == UNFINISHED) | (staged.tokens[:, 0, 1:] == 3)).all()


def test_a_run_over_several_prompts_splits_into_the_runs_of_each():
    options = dict(alpha=2.0, max_new_tokens=4, num_chains=3, num_draws=4, progress=False)
    both = run_sampler(PROBLEM.lm, [[0], [0]], SamplerSpec("entropy-cut"), **options)  # the toy's context: 1 + 4
    alone = run_sampler(PROBLEM.lm, [0], SamplerSpec("entropy-cut"), **options)  # keyed as prompt 0
    first, second = both.for_prompt(0), both.for_prompt(1)
    np.testing.assert_array_equal(first.tokens, alone.tokens)
    for name in alone.stats:
        np.testing.assert_array_equal(first.stats[name], alone.stats[name], err_msg=name)
    assert first.total_tokens == alone.total_tokens and first.settings["prompt_tokens"] == [0]
    assert second.tokens.shape == (3, 4, 4) and not np.array_equal(second.tokens, first.tokens)  # keyed as prompt 1
    with pytest.raises(ValueError, match="single prompt"):
        alone.for_prompt(0)
    with pytest.raises(IndexError, match="prompt 2 of a run over 2"):
        both.for_prompt(2)


@pytest.mark.parametrize("spec", [
    SamplerSpec("entropy-cut"), SamplerSpec("random-cut"), SamplerSpec("ecmh", block_size=2, num_mcmc_steps=2),
    SamplerSpec("ancestral"), SamplerSpec("low-temp"), SamplerSpec("best-of-n", bon_budget=7),
], ids=lambda spec: spec.name)
@pytest.mark.parametrize("prompts", [PROBLEM.prompt, [PROBLEM.prompt, (1,)]], ids=["one prompt", "two prompts"])
def test_the_kernel_and_the_engine_run_draw_the_same_tokens(spec, prompts):
    """`MCMC(kernel)` and `ppl-ecmh sample` (`run_sampler` on the engine) with the same seed: the
    same tokens and statistics, draw for draw, although the kernel's chains pause at every draw
    and the engine's run through; and not the same with another seed."""
    options = dict(alpha=2.0, max_new_tokens=4, num_chains=3, num_draws=5, num_warmup=2, progress=False)
    engine = run_sampler(PROBLEM.lm, prompts, spec, seed=7, **options)
    mcmc = MCMC(spec.make_kernel(), num_warmup=2, num_samples=5, num_chains=3, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(7), PROBLEM.lm, prompts, alpha=2.0, max_new_tokens=4, extra_fields=STAT_FIELDS)
    np.testing.assert_array_equal(mcmc.get_samples(group_by_chain=True)["x"], engine.tokens)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    for field in STAT_FIELDS:
        np.testing.assert_allclose(extra[field], engine.stats[field], rtol=1e-6, err_msg=field)
    other = run_sampler(PROBLEM.lm, prompts, spec, seed=8, **options)
    assert not np.array_equal(other.tokens, engine.tokens)


def test_a_kernel_attending_over_spans_draws_what_it_draws_without(monkeypatch):
    """A per-chain kernel with static attention (an accelerator's default: one slot loop per span
    while it waits for a draw, each until a slot would feed past it) against its dynamic loop: the
    same draws and statistics, bit for bit, with chains that reach past the first span and come
    back below it as later steps cut."""
    monkeypatch.setattr(transformer, "ATTENTION_CHUNK", 16)  # spans 32 and 64 (the cache)
    lm = tiny_model()
    prompts = [[5, 6, 7, 10 + i] for i in range(3)]

    def draws(static: bool):
        monkeypatch.setattr(spans, "static_attention_by_default", lambda: static)
        mcmc = MCMC(kernels.RandomCutMH(power_model), num_warmup=0, num_samples=4, num_chains=2,
                    chain_method="vectorized", progress_bar=False)
        mcmc.run(jax.random.PRNGKey(0), lm, prompts, alpha=1.0, max_new_tokens=60, extra_fields=STAT_FIELDS)
        return mcmc.get_samples(group_by_chain=True)["x"], mcmc.get_extra_fields(group_by_chain=True)

    (static_tokens, static_stats), (tokens, stats) = draws(True), draws(False)
    np.testing.assert_array_equal(static_tokens, tokens)
    for field in STAT_FIELDS:
        np.testing.assert_array_equal(static_stats[field], stats[field], err_msg=field)
    assert stats["length"].max() > 32 and stats["cut"].min() < 28  # past the first span, and back below it
