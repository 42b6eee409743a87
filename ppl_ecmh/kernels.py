"""NumPyro `MCMCKernel` adapters over the pure samplers in `mh`, `blockwise` and `baselines`.

    kernel = EntropyCutMH(power_model)
    mcmc = MCMC(kernel, num_warmup=10, num_samples=50, num_chains=4, chain_method="vectorized")
    mcmc.run(key, lm, prompt, alpha=4.0, max_new_tokens=128, extra_fields=("accepted", "cut"))
    mcmc.get_samples(group_by_chain=True)["x"]  # [chains, draws, max_new_tokens] token ids

The adapters hold no mathematics: they read the target off the model, keep the batched sampler
state, and expose per-step statistics as state fields for `extra_fields`. With
chain_method="vectorized" NumPyro hands `init` a batch of keys; the chains are then the rows of
one batched state (the samplers batch explicitly, so no vmap is needed). The model's weights live in
the state rather than in a closure, so they are not compiled into the program as constants.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro.infer.mcmc import MCMCKernel

from ppl_ecmh import baselines, blockwise, mh, smc, tmc
from ppl_ecmh.cuts import EntropyJump, Mixture, get_cut
from ppl_ecmh.engine.schedule import Schedule
from ppl_ecmh.engine.slots import thinned_steps
from ppl_ecmh.lm.generation import (
    completion_tokens,
    per_row,
    prefill,
    sequence_log_prob,
    within_completion,
)
from ppl_ecmh.target import find_power_target
from ppl_ecmh.validation import check_positive_int, check_tau


class SequenceKernelState(NamedTuple):
    z: dict  # {site: completion tokens}, the sample field
    entropy: jax.Array  # [..., T] base-model entropy before each completion token (0 past the end)
    log_target: jax.Array  # alpha * log p(x)
    length: jax.Array  # completion length
    accepted: jax.Array  # float: 1.0/0.0, or the fraction of a block's steps accepted
    accept_prob: jax.Array
    cut: jax.Array
    old_suffix_length: jax.Array
    new_suffix_length: jax.Array
    num_generated: jax.Array  # tokens decoded by this draw
    stage: jax.Array  # block-wise: number of blocks grown so far
    sampler: mh.SuffixMHState  # batched over chains
    lm: Any
    rng_key: jax.Array  # per chain; per row (chain, prompt) for a kernel keyed by work
    extra: dict  # sampler-specific per-draw statistics (Power-SMC: ESS per step, particle weights)


class _SequenceKernel(MCMCKernel):
    """Shared adapter: subclasses define `_start` (initial sampler state) and `_advance` (one draw:
    new sampler state, SuffixMHInfo, stage, and a dict of extra statistics whose structure
    `_no_extra` gives for the initial state).

    One key drives a batched step, and rows draw independent noise from it, except in a kernel
    `keyed_by_work`: there every row (chain, prompt) has its own key, folded from its chain's key
    and its prompt's work id, and `_advance` gets a key per row, so a prompt's draws do not depend
    on the other prompts of its batch (an evaluation's records then survive another batch size,
    or a resume)."""

    sample_field = "z"
    keyed_by_work = False

    def __init__(self, model, tau=None):
        self._model = model
        self._tau_argument = tau
        self._target = None
        self._batched = True
        self._jitted_start = jax.jit(self._start)  # one compiled program across inits of equal shapes

    @property
    def model(self):
        return self._model

    @property
    def target(self):
        return self._target

    @property
    def tau(self) -> float:
        return check_tau(self._tau_argument, self._target.alpha)

    def _to_rows(self, array):
        """Flatten exposed [chains, (prompts,) ...] arrays to the sampler's rows."""
        return array.reshape((-1,) + array.shape[self._exposed_batch_ndim:])

    @property
    def _exposed_batch_ndim(self) -> int:
        return int(self._batched) + len(self._target.sequence.batch_shape)

    def _limit(self, batch):
        return jnp.full(batch, self._target.max_new_tokens, jnp.int32)

    def _start(self, rng_key, seqs, lm):
        return mh.init(rng_key, lm, seqs, self.tau)

    def _advance(self, rng_key, state: mh.SuffixMHState, lm, stage):
        raise NotImplementedError

    def _no_extra(self, rows: int) -> dict:
        return {}

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        self._target = find_power_target(self._model, model_args, model_kwargs)
        self.tau  # validate now, with a message naming the parameter
        self._batched = per_row(rng_key)
        keys = rng_key if self._batched else rng_key[None]
        sequence = self._target.sequence
        seqs = sequence.empty_sequences(keys.shape[0])
        rows = seqs.tokens.shape[0]
        if init_params is not None:
            completions = jnp.asarray(init_params[self._target.site]).reshape(rows, -1)
            sampler = mh.init_from_completions(self._target.lm, seqs, completions, self.tau)
        else:
            sampler = self._jitted_start(keys[0], seqs, self._target.lm)
        info = mh.SuffixMHInfo(
            accepted=jnp.ones(rows, bool),
            accept_prob=jnp.ones(rows),
            cut=jnp.zeros(rows, jnp.int32),
            old_suffix_length=jnp.zeros(rows, jnp.int32),
            new_suffix_length=sampler.seqs.length,
            num_generated=sampler.seqs.length,
            log_target=self._target.alpha * sequence_log_prob(sampler.seqs),
        )
        if self.keyed_by_work:
            work = jnp.asarray(sequence.work_ids * keys.shape[0], jnp.uint32)  # rows are chain-major
            rng_key = jax.vmap(jax.random.fold_in)(jnp.repeat(keys, len(sequence.work_ids), axis=0), work)
        return self._state(sampler, info, jnp.zeros(rows, jnp.int32), self._target.lm, rng_key, self._no_extra(rows))

    def _state(self, sampler, info, stage, lm, rng_key, extra) -> SequenceKernelState:
        """Expose row arrays as [chains, (prompts,) ...], or [(prompts,) ...] for a single chain."""
        shape = ((-1,) if self._batched else ()) + self._target.sequence.batch_shape
        expose = lambda a: a.reshape(shape + a.shape[1:])
        tokens = completion_tokens(sampler.seqs, self._target.pad_id, self._target.lm)
        return SequenceKernelState(
            z={self._target.site: expose(tokens)},
            entropy=expose(jnp.where(within_completion(sampler.seqs), sampler.seqs.entropy, 0.0)),
            log_target=expose(info.log_target),
            length=expose(sampler.seqs.length),
            accepted=expose(info.accepted.astype(jnp.float32)),
            accept_prob=expose(info.accept_prob.astype(jnp.float32)),
            cut=expose(info.cut.astype(jnp.int32)),
            old_suffix_length=expose(info.old_suffix_length.astype(jnp.int32)),
            new_suffix_length=expose(info.new_suffix_length.astype(jnp.int32)),
            num_generated=expose(info.num_generated.astype(jnp.int32)),
            stage=expose(stage.astype(jnp.int32)),
            sampler=sampler,
            lm=lm,  # passed through, never closed over: jit must not bake the weights in
            rng_key=rng_key,
            extra={name: expose(value) for name, value in extra.items()},
        )

    def sample(self, state: SequenceKernelState, model_args, model_kwargs):
        keys = state.rng_key if self._batched or self.keyed_by_work else state.rng_key[None]
        pairs = jax.vmap(jax.random.split)(keys)
        step_key = pairs[:, 1] if self.keyed_by_work else pairs[0, 1]
        new_keys = pairs[:, 0] if self._batched or self.keyed_by_work else pairs[0, 0]
        stage = self._to_rows(state.stage)
        sampler, info, stage, extra = self._advance(step_key, state.sampler, state.lm, stage)
        return self._state(sampler, info, stage, state.lm, new_keys, extra)

    def postprocess_fn(self, model_args, model_kwargs):
        return lambda z: z

    def get_diagnostics_str(self, state):
        return f"acc. prob={float(jnp.mean(state.accept_prob)):.2f}"


def _info_of_moves(accepted, accept_prob, cut, old_suffix_length, new_suffix_length, generated, log_target):
    """A draw's statistics from its MH steps [steps, B]: the fraction accepted, the mean
    acceptance probability, the last cut, the suffix lengths summed; `generated` [B] counts every
    token the draw decoded."""
    zeros = jnp.zeros(accepted.shape[1])
    moved = accepted.shape[0] > 0
    return mh.SuffixMHInfo(
        accepted=jnp.mean(accepted, axis=0) if moved else zeros,
        accept_prob=jnp.mean(accept_prob, axis=0) if moved else zeros,
        cut=cut[-1] if moved else zeros.astype(jnp.int32),
        old_suffix_length=jnp.sum(old_suffix_length, axis=0),
        new_suffix_length=jnp.sum(new_suffix_length, axis=0),
        num_generated=generated,
        log_target=log_target,
    )


class SuffixMH(_SequenceKernel):
    """Suffix-resampling MH with any cut distribution (a name from `ppl_ecmh.cuts` or an object).

    NumPyro asks for one draw per call with every chain in one batch, so with `steps_per_draw=1`
    the chains wait for each other's proposals. With `steps_per_draw=k` a draw is k MH steps
    (thinning), during which every chain runs its own steps at its own pace in the engine's slot
    loop (`ppl_ecmh.engine.slots.thinned_steps`); per-draw statistics then summarize the k steps
    as `BlockwiseMH`'s do."""

    def __init__(self, model, cut="uniform", tau=None, steps_per_draw=1, **cut_params):
        super().__init__(model, tau)
        self.cut = get_cut(cut, **cut_params)
        self.steps_per_draw = check_positive_int("steps_per_draw", steps_per_draw)

    def _advance(self, rng_key, state, lm, stage):
        alpha, rows = self._target.alpha, stage.shape[0]
        if self.steps_per_draw == 1:
            state, info = mh.suffix_mh_step(rng_key, state, lm, cut=self.cut, alpha=alpha, tau=self.tau,
                                            limit=self._limit(rows))
            return state, info, stage, {}
        schedule = Schedule.thinned(self._target.max_new_tokens, self.steps_per_draw, cut=self.cut, alpha=alpha,
                                    tau=self.tau)
        state, steps = thinned_steps(rng_key, state, lm, schedule)
        moves = jax.tree.map(lambda a: a[:, 1:].T, steps)  # step 0 (the extension) is not run
        info = _info_of_moves(*moves, jnp.sum(moves.new_suffix_length, axis=0),
                              alpha * sequence_log_prob(state.seqs))
        return state, info, stage, {}


class RandomCutMH(SuffixMH):
    """The earlier method (Karan & Du): cut position uniform over the completion."""

    def __init__(self, model, tau=None, steps_per_draw=1):
        super().__init__(model, cut="uniform", tau=tau, steps_per_draw=steps_per_draw)


class EntropyCutMH(SuffixMH):
    """Entropy-cut MH. Default cut: the published entropy jump (power 4) mixed with 10% uniform,
    which keeps every cut reachable; pass cut="entropy_jump" for the published cut alone."""

    def __init__(self, model, cut=None, tau=None, steps_per_draw=1, **cut_params):
        super().__init__(model, cut=cut if cut is not None else Mixture(EntropyJump(power=4.0), eps=0.1), tau=tau,
                         steps_per_draw=steps_per_draw, **cut_params)


class BlockwiseMH(_SequenceKernel):
    """The block-wise schedule as a chain: each draw grows every unfinished sample by one block of
    `block_size` tokens (until max_new_tokens) and runs `num_mcmc_steps` MH steps on the tokens so
    far. Once grown, each draw is `num_mcmc_steps` MH steps on pi_alpha itself, so use at least
    ceil(max_new_tokens / block_size) warmup draws. Per-draw statistics average the block's steps:
    `accepted` is the fraction accepted, `accept_prob` the mean probability; `cut` is the last cut.
    """

    def __init__(self, model, cut="uniform", block_size=192, num_mcmc_steps=10, tau=None, **cut_params):
        super().__init__(model, tau)
        self.cut = get_cut(cut, **cut_params)
        self.block_size = check_positive_int("block_size", block_size)
        self.num_mcmc_steps = check_positive_int("num_mcmc_steps", num_mcmc_steps, minimum=0)

    def _start(self, rng_key, seqs, lm):
        return mh.SuffixMHState(seqs, prefill(lm, seqs))

    def _advance(self, rng_key, state, lm, stage):
        stage = jnp.minimum(stage + 1, blockwise.num_blocks(self._target.max_new_tokens, self.block_size))
        limit = jnp.minimum(stage * self.block_size, self._target.max_new_tokens).astype(jnp.int32)
        everyone = jnp.ones(stage.shape[0], bool)
        state, block = blockwise.run_block(
            rng_key, state, lm, cut=self.cut, alpha=self._target.alpha, tau=self.tau, limit=limit,
            num_mcmc_steps=self.num_mcmc_steps, extend_rows=everyone, mh_rows=everyone,
        )
        steps = block.mh
        info = _info_of_moves(steps.accepted, steps.accept_prob, steps.cut, steps.old_suffix_length,
                              steps.new_suffix_length, block.extension_generated + jnp.sum(steps.num_generated, axis=0),
                              self._target.alpha * sequence_log_prob(state.seqs))
        return state, info, stage, {}


class _IndependentSampler(_SequenceKernel):
    def _advance(self, rng_key, state, lm, stage):
        state, info = baselines.independent_step(
            rng_key, state, lm, tau=self.tau, alpha=self._target.alpha, limit=self._limit(stage.shape[0])
        )
        return state, info, stage, {}


class AncestralSampler(_IndependentSampler):
    """Baseline: every draw a fresh completion from the base model (tau = 1); exact for p, not pi_alpha."""

    def __init__(self, model):
        super().__init__(model, tau=1.0)


class LowTemperatureSampler(_IndependentSampler):
    """Baseline: every draw a fresh completion at per-token temperature tau (default 1/alpha).
    It sharpens each conditional, not the joint: it does not sample pi_alpha."""


class PowerSMC(_SequenceKernel):
    """Power-SMC (`ppl_ecmh.smc`): every draw runs a fresh particle system of `num_particles` per
    chain with the tau = 1/alpha proposal and returns one particle picked by weight. Draws are
    independent; `num_generated` counts the tokens of all particles. Extra statistics per draw:
    `smc_ess` [steps] (ESS after each step), `smc_log_weights` [num_particles] (final, normalized)
    and `smc_resamples` (how many times the system was resampled). Keyed by work."""

    keyed_by_work = True

    def __init__(self, model, num_particles=16, block_size=1, ess_threshold=0.5, tau=None):
        super().__init__(model, tau)
        self.num_particles = check_positive_int("num_particles", num_particles)
        self.block_size = check_positive_int("block_size", block_size)
        if not 0 < ess_threshold <= 1:
            raise ValueError(f"ess_threshold: must be in (0, 1], got {ess_threshold}")
        self.ess_threshold = ess_threshold

    def _start(self, rng_key, seqs, lm):
        return mh.SuffixMHState(seqs, prefill(lm, seqs))

    def _steps(self) -> int:
        return -(-self._target.max_new_tokens // self.block_size)

    def _no_extra(self, rows):
        return {"smc_ess": jnp.zeros((rows, self._steps())), "smc_resamples": jnp.zeros(rows, jnp.int32),
                "smc_log_weights": jnp.full((rows, self.num_particles), -jnp.log(self.num_particles))}

    def _advance(self, row_keys, state, lm, stage):
        rows, n = stage.shape[0], self.num_particles
        pairs = jax.vmap(jax.random.split)(row_keys)
        run_keys, draw_keys = pairs[:, 0], pairs[:, 1]
        repeat = lambda leaf: jnp.repeat(leaf, n, axis=0)
        particles = mh.SuffixMHState(jax.tree.map(repeat, state.seqs)._replace(length=jnp.zeros(rows * n, jnp.int32)),
                                     jax.tree.map(repeat, state.cache))
        system, info = smc.power_smc(run_keys, particles, lm, num_particles=n, alpha=self._target.alpha, tau=self.tau,
                                     limit=repeat(self._limit(rows)), block_size=self.block_size,
                                     ess_threshold=self.ess_threshold)
        chosen = jax.tree.map(lambda leaf: leaf[smc.draw(draw_keys, system, n)], system.particles)
        ones = jnp.ones(rows)
        step_info = mh.SuffixMHInfo(
            accepted=ones, accept_prob=ones, cut=jnp.zeros(rows, jnp.int32), old_suffix_length=state.seqs.length,
            new_suffix_length=chosen.seqs.length, num_generated=info.num_generated,
            log_target=self._target.alpha * sequence_log_prob(chosen.seqs))
        extra = {"smc_ess": info.ess.T, "smc_resamples": info.resampled.sum(axis=0).astype(jnp.int32),
                 "smc_log_weights": jax.nn.log_softmax(system.log_weights.reshape(rows, n), axis=-1)}
        return chosen, step_info, stage, extra


class BestOfN(_SequenceKernel):
    """Compute-matched best-of-N (`ppl_ecmh.baselines.best_of_n`): every draw spends `token_budget`
    tokens per chain on independent completions at temperature tau (default 1: ancestral) and
    returns the one with the highest mean log p. Set the budget to what the MH run it is matched
    against decoded per draw."""

    def __init__(self, model, token_budget, tau=1.0):
        super().__init__(model, tau)
        self.token_budget = check_positive_int("token_budget", token_budget)

    def _start(self, rng_key, seqs, lm):
        return mh.SuffixMHState(seqs, prefill(lm, seqs))

    def _advance(self, rng_key, state, lm, stage):
        rows = stage.shape[0]
        best, spent = baselines.best_of_n(rng_key, state, lm, tau=self.tau, limit=self._limit(rows),
                                          budget=jnp.full(rows, self.token_budget, jnp.int32))
        ones = jnp.ones(rows)
        info = mh.SuffixMHInfo(
            accepted=ones, accept_prob=ones, cut=jnp.zeros(rows, jnp.int32), old_suffix_length=state.seqs.length,
            new_suffix_length=best.seqs.length, num_generated=spent,
            log_target=self._target.alpha * sequence_log_prob(best.seqs))
        return best, info, stage, {}


class ScalablePowerSampler(_SequenceKernel):
    """Scalable power sampling ("TMC", `ppl_ecmh.tmc`): every draw generates a fresh completion
    token by token from the candidates' p^alpha times look-ahead estimates of their futures'
    mass. Draws are independent; `num_generated` counts the look-ahead rollouts too. Keyed by work."""

    keyed_by_work = True

    def __init__(self, model, num_candidates=4, num_rollouts=4, horizon=8, jackknife=True, tau=None):
        super().__init__(model, tau)
        self.num_candidates = check_positive_int("num_candidates", num_candidates)
        self.num_rollouts = check_positive_int("num_rollouts", num_rollouts)
        self.horizon = check_positive_int("horizon", horizon, minimum=0)
        self.jackknife = jackknife

    def _start(self, rng_key, seqs, lm):
        return mh.SuffixMHState(seqs, prefill(lm, seqs))

    def _advance(self, row_keys, state, lm, stage):
        rows = stage.shape[0]
        empty = state._replace(seqs=state.seqs._replace(length=jnp.zeros(rows, jnp.int32)))
        new, info = tmc.tmc_sample(row_keys, empty, lm, alpha=self._target.alpha, tau=self.tau, limit=self._limit(rows),
                                   num_candidates=self.num_candidates, num_rollouts=self.num_rollouts,
                                   horizon=self.horizon, jackknife=self.jackknife)
        ones = jnp.ones(rows)
        step_info = mh.SuffixMHInfo(
            accepted=ones, accept_prob=ones, cut=jnp.zeros(rows, jnp.int32), old_suffix_length=state.seqs.length,
            new_suffix_length=new.seqs.length, num_generated=info.num_generated,
            log_target=self._target.alpha * sequence_log_prob(new.seqs))
        return new, step_info, stage, {}
