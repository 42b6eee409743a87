"""NumPyro `MCMCKernel` adapters: the per-chain samplers drive the engine's slots, the population
samplers (Power-SMC, TMC) their own loops.

    kernel = EntropyCutMH(power_model)
    mcmc = MCMC(kernel, num_warmup=10, num_samples=50, num_chains=4, chain_method="vectorized")
    mcmc.run(key, lm, prompt, alpha=4.0, max_new_tokens=128, extra_fields=("accepted", "cut"))
    mcmc.get_samples(group_by_chain=True)["x"]  # [chains, draws, max_new_tokens] token ids

The adapters hold no mathematics: they read the target off the model and expose each draw's
statistics as state fields for `extra_fields`. With chain_method="vectorized" NumPyro hands
`init` a batch of keys; the chains (times the prompts of a batch) are then the rows of one state.
Row (chain c, prompt p) is keyed by its chain's key folded with the prompt's work id
(`engine.work_keys`), so `ppl-ecmh sample` with the same seed draws the same tokens. The model's
weights live in the state rather than in a closure, so they are not compiled in as constants.

A per-chain kernel's rows are the slots of one engine batch (`ppl_ecmh.engine.slots`): NumPyro asks
for one draw at a time, and the call returns once every chain has it; meanwhile a chain that is
ahead goes on with its next draws, up to `buffer_draws` ahead, so the chains rarely wait for each
other's proposals and a run decodes about as many iterations as the engine's CLI run.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro.infer.mcmc import MCMCKernel

from ppl_ecmh.engine import slots as engine
from ppl_ecmh.engine.schedule import Schedule
from ppl_ecmh.engine.scheduler import work_keys
from ppl_ecmh.lm import spans
from ppl_ecmh.samplers import smc, tmc
from ppl_ecmh.samplers.cuts import EntropyJump, Mixture, get_cut
from ppl_ecmh.lm.generation import (Generated, completion_tokens, padded_completions, per_row, prefill,
                                    sequence_log_prob, within_completion)
from ppl_ecmh.numpyro.target import find_power_target
from ppl_ecmh.validation import check_positive_int, check_tau

DEFAULT_BUFFER_DRAWS = 16


class SequenceKernelState(NamedTuple):
    z: dict  # {site: completion tokens}, the sample field
    entropy: jax.Array  # [..., T] base-model entropy before each completion token (0 past the end)
    log_target: jax.Array  # alpha * log p(x)
    length: jax.Array  # completion length
    accepted: jax.Array  # float: 1.0/0.0, or the fraction of a draw's MH steps accepted
    accept_prob: jax.Array  # the mean over a draw's MH steps
    cut: jax.Array  # the last cut
    old_suffix_length: jax.Array
    new_suffix_length: jax.Array
    num_generated: jax.Array  # tokens decoded by this draw
    last_step: dict | None  # per-chain samplers: the decision of the draw's last step and the sequence it
    # did not keep (`slots.LAST_STEP_FIELDS`), as `ppl-ecmh sample` records them; None for population samplers
    sampler: Any  # the sampler's own state: `EngineChains`, or a population sampler's prompts
    lm: Any
    rng_key: jax.Array  # per row (chain, prompt): its chain's key folded with the prompt's work id
    extra: dict  # sampler-specific per-draw statistics (Power-SMC: ESS per step, particle weights)


class EngineChains(NamedTuple):
    slots: engine.Slots  # one slot per row
    draw: jax.Array  # [] the draw the state holds; -1: the initial state


class _PowerKernel(MCMCKernel):
    """What every adapter shares: the target read off the model at `init`, the rows' keys, and the
    state's exposed fields as [chains, (prompts,) ...] (or [(prompts,) ...] for a single chain)."""

    sample_field = "z"

    def __init__(self, model, tau=None):
        self._model = model
        self._tau_argument = tau
        self._target = None
        self._batched = True

    @property
    def model(self):
        return self._model

    @property
    def target(self):
        return self._target

    @property
    def tau(self) -> float:
        return check_tau(self._tau_argument, self._target.alpha)

    def _rows(self, rng_key, model_args, model_kwargs):
        """Read the target; the rows' keys [chains * prompts, 2], chain-major."""
        self._target = find_power_target(self._model, model_args, model_kwargs)
        self.tau  # validate now, with a message naming the parameter
        self._batched = per_row(rng_key)
        keys = rng_key if self._batched else rng_key[None]
        return work_keys(keys, self._target.sequence.work_ids)

    def _state(self, sampler, lm, rng_key, tokens, entropy, stats: dict, extra=None,
               last_step=None) -> SequenceKernelState:
        shape = ((-1,) if self._batched else ()) + self._target.sequence.batch_shape
        expose = lambda a: a.reshape(shape + a.shape[1:])
        kinds = dict(log_target=jnp.float32, accepted=jnp.float32, accept_prob=jnp.float32)
        return SequenceKernelState(
            z={self._target.site: expose(tokens)}, entropy=expose(entropy),
            **{name: expose(stats[name].astype(kinds.get(name, jnp.int32))) for name in engine.STAT_FIELDS},
            last_step=None if last_step is None else {name: expose(value) for name, value in last_step.items()},
            sampler=sampler,
            lm=lm,  # passed through, never closed over: jit must not bake the weights in
            rng_key=rng_key, extra={name: expose(value) for name, value in (extra or {}).items()},
        )

    def _of_sequences(self, sampler, lm, rng_key, seqs, generated, old_length=None, extra=None,
                      last_step=None) -> SequenceKernelState:
        """The state whose draw is `seqs`, taken whole (accepted, no cut) after a draw of length
        `old_length` (none: the initial state), `generated` tokens decoded for it."""
        ones, zeros = jnp.ones(seqs.length.shape), jnp.zeros_like(seqs.length)
        stats = dict(log_target=self._target.alpha * sequence_log_prob(seqs), length=seqs.length, accepted=ones,
                     accept_prob=ones, cut=zeros, old_suffix_length=zeros if old_length is None else old_length,
                     new_suffix_length=seqs.length, num_generated=generated)
        return self._state(sampler, lm, rng_key, completion_tokens(seqs, self._target.pad_id, lm),
                           jnp.where(within_completion(seqs), seqs.entropy, 0.0), stats, extra, last_step)

    def postprocess_fn(self, model_args, model_kwargs):
        return lambda z: z

    def get_diagnostics_str(self, state):
        return f"acc. prob={float(jnp.mean(state.accept_prob)):.2f}"


class _ChainKernel(_PowerKernel):
    """A per-chain sampler: its `schedule` run in the engine's slots, one slot per row."""

    def __init__(self, model, tau=None, buffer_draws=DEFAULT_BUFFER_DRAWS):
        super().__init__(model, tau)
        self.buffer_draws = check_positive_int("buffer_draws", buffer_draws)

    def schedule(self, alpha: float, max_new_tokens: int, num_draws: int) -> Schedule:
        """The sampler's chain of `num_draws` draws, as the engine runs it (`ppl-ecmh sample`)."""
        raise NotImplementedError

    def _open_schedule(self) -> Schedule:
        return self.schedule(self._target.alpha, self._target.max_new_tokens, 1).open_ended()

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        keys = self._rows(rng_key, model_args, model_kwargs)
        seqs = self._target.sequence.empty_sequences(keys.shape[0] // len(self._target.sequence.prompts))
        block = seqs.tokens.shape[1] - self._target.max_new_tokens
        completions = None
        if init_params is not None:
            completions = jnp.asarray(init_params[self._target.site]).reshape(keys.shape[0], -1)
        self._static_attention = spans.uses_static_attention(None)
        slots = _start(seqs.tokens[:, :block], seqs.prompt_length, keys, completions, self._target.lm,
                       self._open_schedule(), self.buffer_draws, self._static_attention)
        no_step = {name: jnp.zeros_like(getattr(slots.draws, name)[:, 0]) for name in engine.LAST_STEP_FIELDS}
        return self._of_sequences(EngineChains(slots, jnp.asarray(-1)), self._target.lm, keys, slots.current,
                                  slots.initial_generated, last_step=no_step)

    def sample(self, state: SequenceKernelState, model_args, model_kwargs):
        schedule, lm = self._open_schedule(), state.lm
        draw = state.sampler.draw + 1
        rows = state.sampler.slots.step.shape[0]
        # the buffer holds draws draw .. draw + buffer_draws - 1: no chain may go past them
        slots = engine.resume(state.sampler.slots, lm, jnp.full(rows, draw + self.buffer_draws, jnp.int32), schedule)
        slots = _wait(slots, lm, jnp.full(rows, draw + 1, jnp.int32), schedule, self._static_attention)
        record = jax.tree.map(lambda a: a[:, draw % self.buffer_draws], slots.draws)
        tokens = padded_completions(record.tokens, record.length, self._target.pad_id, lm)
        return self._state(EngineChains(slots, draw), lm, state.rng_key, tokens, record.entropy,
                           engine.draw_statistics(record),
                           last_step={name: getattr(record, name) for name in engine.LAST_STEP_FIELDS})


def _wait(slots, lm, need, schedule: Schedule, static_attention: bool) -> engine.Slots:
    """Run the slots until every chain has `need` draws (with static attention, one loop per span)."""
    for span in spans.decode_spans(slots.current.tokens.shape[1], static_attention):
        slots = engine.advance(slots, lm, jnp.iinfo(jnp.int32).max, 1, schedule, span, need)
    return slots


@functools.partial(jax.jit, static_argnums=(5, 6, 7))
def _start(prompts, prompt_length, keys, completions, lm, schedule: Schedule, buffer_draws: int,
           static_attention: bool) -> engine.Slots:
    """Slots holding every row's chain, each past its steps before the first draw."""
    rows, block = prompts.shape
    slots = engine.empty_slots(lm, rows, block, schedule, buffer_draws, 1)
    every = jnp.arange(rows)
    slots = engine.admit(slots, lm, every, prompts, prompt_length, keys, every, completions,
                         jnp.zeros(rows, jnp.int32), schedule)
    return _wait(slots, lm, jnp.zeros(rows, jnp.int32), schedule, static_attention)


class SuffixMH(_ChainKernel):
    """Suffix-resampling MH with any cut distribution (a name from `ppl_ecmh.samplers.cuts` or an object).
    Each draw is `steps_per_draw` MH steps (thinning); per-draw statistics then summarize them as
    `BlockwiseMH`'s do."""

    def __init__(self, model, cut="uniform", tau=None, steps_per_draw=1, buffer_draws=DEFAULT_BUFFER_DRAWS,
                 **cut_params):
        super().__init__(model, tau, buffer_draws)
        self.cut = get_cut(cut, **cut_params)
        self.steps_per_draw = check_positive_int("steps_per_draw", steps_per_draw)

    def schedule(self, alpha, max_new_tokens, num_draws):
        return Schedule.suffix_mh(max_new_tokens, num_draws, cut=self.cut, alpha=alpha,
                                  tau=check_tau(self._tau_argument, alpha), steps_per_draw=self.steps_per_draw)


class RandomCutMH(SuffixMH):
    """The earlier method (Karan & Du): cut position uniform over the completion."""

    def __init__(self, model, tau=None, steps_per_draw=1, buffer_draws=DEFAULT_BUFFER_DRAWS):
        super().__init__(model, cut="uniform", tau=tau, steps_per_draw=steps_per_draw, buffer_draws=buffer_draws)


class EntropyCutMH(SuffixMH):
    """Entropy-cut MH. Default cut: the published entropy jump (power 4) mixed with 10% uniform,
    which keeps every cut reachable; pass cut="entropy_jump" for the published cut alone."""

    def __init__(self, model, cut=None, tau=None, steps_per_draw=1, buffer_draws=DEFAULT_BUFFER_DRAWS, **cut_params):
        super().__init__(model, cut=cut if cut is not None else Mixture(EntropyJump(power=4.0), eps=0.1), tau=tau,
                         steps_per_draw=steps_per_draw, buffer_draws=buffer_draws, **cut_params)


class BlockwiseMH(_ChainKernel):
    """The block-wise schedule as a chain: each draw grows every unfinished sample by one block of
    `block_size` tokens (until max_new_tokens) and runs `num_mcmc_steps` MH steps on the tokens so
    far. Once grown, each draw is `num_mcmc_steps` MH steps on pi_alpha itself, so use at least
    ceil(max_new_tokens / block_size) warmup draws. Per-draw statistics average the block's steps:
    `accepted` is the fraction accepted, `accept_prob` the mean probability; `cut` is the last cut.
    """

    def __init__(self, model, cut="uniform", block_size=192, num_mcmc_steps=10, tau=None,
                 buffer_draws=DEFAULT_BUFFER_DRAWS, **cut_params):
        super().__init__(model, tau, buffer_draws)
        self.cut = get_cut(cut, **cut_params)
        self.block_size = check_positive_int("block_size", block_size)
        self.num_mcmc_steps = check_positive_int("num_mcmc_steps", num_mcmc_steps, minimum=0)

    def schedule(self, alpha, max_new_tokens, num_draws):
        return Schedule.blockwise(max_new_tokens, self.block_size, self.num_mcmc_steps, cut=self.cut, alpha=alpha,
                                  tau=check_tau(self._tau_argument, alpha), num_stages=num_draws)


class LowTemperatureSampler(_ChainKernel):
    """Baseline: every draw a fresh completion at per-token temperature tau (default 1/alpha).
    It sharpens each conditional, not the joint: it does not sample pi_alpha."""

    def schedule(self, alpha, max_new_tokens, num_draws):
        return Schedule.independent(max_new_tokens, max(1, num_draws), alpha=alpha,
                                    tau=check_tau(self._tau_argument, alpha))


class AncestralSampler(LowTemperatureSampler):
    """Baseline: every draw a fresh completion from the base model (tau = 1); exact for p, not pi_alpha."""

    def __init__(self, model, buffer_draws=DEFAULT_BUFFER_DRAWS):
        super().__init__(model, tau=1.0, buffer_draws=buffer_draws)


class BestOfN(_ChainKernel):
    """Compute-matched best-of-N: every draw spends `token_budget` tokens per chain on independent
    completions at temperature tau (default 1: ancestral) and returns the one with the highest mean
    log p (`engine.schedule.best_of_n_score`). Set the budget to what the MH run it is matched
    against decoded per draw."""

    def __init__(self, model, token_budget, tau=1.0, buffer_draws=DEFAULT_BUFFER_DRAWS):
        super().__init__(model, tau, buffer_draws)
        self.token_budget = check_positive_int("token_budget", token_budget)

    def schedule(self, alpha, max_new_tokens, num_draws):
        return Schedule.best_of_n(max_new_tokens, self.token_budget, max(1, num_draws), alpha=alpha,
                                  tau=check_tau(self._tau_argument, alpha))


class _PopulationKernel(_PowerKernel):
    """A sampler whose draws are independent runs of a population over every row at once (Power-SMC,
    TMC): its state is the prompts' cache; each row draws from its own key."""

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        keys = self._rows(rng_key, model_args, model_kwargs)
        seqs = self._target.sequence.empty_sequences(keys.shape[0] // len(self._target.sequence.prompts))
        prompts = Generated(seqs, _prefill(self._target.lm, seqs))
        return self._of_sequences(prompts, self._target.lm, keys, seqs, jnp.zeros_like(seqs.length),
                                  extra=self._no_extra(keys.shape[0]))

    def _no_extra(self, rows: int) -> dict:
        return {}

    def _draw(self, row_keys, prompts: Generated, lm) -> tuple[Generated, jax.Array, dict]:
        """One draw per row: the drawn sequences, the tokens decoded, extra statistics."""
        raise NotImplementedError

    def sample(self, state: SequenceKernelState, model_args, model_kwargs):
        pairs = jax.vmap(jax.random.split)(state.rng_key)
        drawn, generated, extra = self._draw(pairs[:, 1], state.sampler, state.lm)
        return self._of_sequences(state.sampler, state.lm, pairs[:, 0], drawn.seqs, generated,
                                  state.length.reshape(-1), extra)

    def _limit(self, rows):
        return jnp.full(rows, self._target.max_new_tokens, jnp.int32)


_prefill = jax.jit(prefill)


class PowerSMC(_PopulationKernel):
    """Power-SMC (`ppl_ecmh.samplers.smc`): every draw runs a fresh particle system of `num_particles` per
    chain with the tau = 1/alpha proposal and returns one particle picked by weight. Draws are
    independent; `num_generated` counts the tokens of all particles. Extra statistics per draw:
    `smc_ess` [steps] (ESS after each step), `smc_log_weights` [num_particles] (final, normalized)
    and `smc_resamples` (how many times the system was resampled)."""

    def __init__(self, model, num_particles=16, block_size=1, ess_threshold=0.5, tau=None):
        super().__init__(model, tau)
        self.num_particles = check_positive_int("num_particles", num_particles)
        self.block_size = check_positive_int("block_size", block_size)
        if not 0 < ess_threshold <= 1:
            raise ValueError(f"ess_threshold: must be in (0, 1], got {ess_threshold}")
        self.ess_threshold = ess_threshold

    def _steps(self) -> int:
        return -(-self._target.max_new_tokens // self.block_size)

    def _no_extra(self, rows):
        return {"smc_ess": jnp.zeros((rows, self._steps())), "smc_resamples": jnp.zeros(rows, jnp.int32),
                "smc_log_weights": jnp.full((rows, self.num_particles), -jnp.log(self.num_particles))}

    def _draw(self, row_keys, prompts, lm):
        rows, n = row_keys.shape[0], self.num_particles
        pairs = jax.vmap(jax.random.split)(row_keys)
        particles = jax.tree.map(lambda leaf: jnp.repeat(leaf, n, axis=0), prompts)
        system, info = smc.power_smc(pairs[:, 0], particles, lm, num_particles=n, alpha=self._target.alpha,
                                     tau=self.tau, limit=jnp.repeat(self._limit(rows), n), block_size=self.block_size,
                                     ess_threshold=self.ess_threshold)
        chosen = jax.tree.map(lambda leaf: leaf[smc.draw(pairs[:, 1], system, n)], system.particles)
        extra = {"smc_ess": info.ess.T, "smc_resamples": info.resampled.sum(axis=0).astype(jnp.int32),
                 "smc_log_weights": jax.nn.log_softmax(system.log_weights.reshape(rows, n), axis=-1)}
        return chosen, info.num_generated, extra


class ScalablePowerSampler(_PopulationKernel):
    """Scalable power sampling ("TMC", `ppl_ecmh.samplers.tmc`): every draw generates a fresh completion
    token by token from the candidates' p^alpha times look-ahead estimates of their futures'
    mass. Draws are independent; `num_generated` counts the look-ahead rollouts too."""

    def __init__(self, model, num_candidates=4, num_rollouts=4, horizon=8, jackknife=True, tau=None):
        super().__init__(model, tau)
        self.num_candidates = check_positive_int("num_candidates", num_candidates)
        self.num_rollouts = check_positive_int("num_rollouts", num_rollouts)
        self.horizon = check_positive_int("horizon", horizon, minimum=0)
        self.jackknife = jackknife

    def _draw(self, row_keys, prompts, lm):
        new, info = tmc.tmc_sample(row_keys, prompts, lm, alpha=self._target.alpha, tau=self.tau,
                                   limit=self._limit(row_keys.shape[0]), num_candidates=self.num_candidates,
                                   num_rollouts=self.num_rollouts, horizon=self.horizon, jackknife=self.jackknife)
        return new, info.num_generated, {}
