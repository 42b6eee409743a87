"""Every sampler by name: one record each, saying how it runs, what its draws are, which options it
reads and how to build its engine schedule and its NumPyro kernel. The runner, the evaluation, the
Ray driver and the command line read these records; nothing else decides by a sampler's name
(`tests/test_samplers_registry.py` holds the code to that).

A record describes; `SamplerSpec` is a sampler with its option values, the unit the rest of the
library passes around.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from ppl_ecmh.engine import Schedule
from ppl_ecmh.numpyro import kernels
from ppl_ecmh.numpyro.target import power_model
from ppl_ecmh.samplers.cuts import Uniform, get_cut
from ppl_ecmh.validation import check_positive_int

ENGINE, POPULATION = "engine", "population"  # how a sampler runs: chains on the engine, or a population in lockstep
INITIAL, MARKOV, ONE = "initial", "markov", "one"  # what its draws are, in an evaluation


@dataclasses.dataclass(frozen=True)
class Sampler:
    name: str
    runs_on: str  # ENGINE: one chain per work item on the engine; POPULATION: rows of a problem in lockstep
    draws: str  # INITIAL: the initial completion; MARKOV: a chain's states; ONE: one draw is the method
    summary: str  # what one of its draws is, for the command line's help
    options: tuple[str, ...] = ()  # the SamplerSpec fields it reads beyond tau and top_k
    preset: tuple[tuple[str, object], ...] = ()  # fields it fixes (a published recipe)
    blockwise: bool = False  # the block-wise schedule: a draw per block, the stages before the last warmup
    mh: bool = False  # resamples suffixes with MH: records what its proposals decoded after the cut
    kernel: Callable = None  # (spec, model) -> a NumPyro MCMCKernel
    rows: Callable = lambda spec: 1  # rows of a lockstep batch one problem takes

    @property
    def budgeted(self) -> bool:
        """Spends a token budget, by default what an MH sampler's records spent (BUDGET_SOURCES)."""
        return "bon_budget" in self.options

    def draws_in_eval(self, max_new_tokens: int, mh_steps: int, block_size: int) -> int:
        """Draws an evaluation runs: none past the initial completion, one, one per block, or
        `mh_steps` MH steps."""
        if self.draws == INITIAL:
            return 0
        if self.draws == ONE:
            return 1
        return math.ceil(max_new_tokens / block_size) if self.blockwise else mh_steps


def _blockwise_kernel(spec, model):
    return kernels.BlockwiseMH(model, cut=spec.make_cut(), block_size=spec.block_size,
                               num_mcmc_steps=spec.num_mcmc_steps, tau=spec.tau)


BLOCKWISE_OPTIONS = ("cut", "cut_params", "block_size", "num_mcmc_steps")
_blockwise = dict(runs_on=ENGINE, draws=MARKOV, options=BLOCKWISE_OPTIONS, blockwise=True, mh=True,
                  kernel=_blockwise_kernel)

REGISTRY = {sampler.name: sampler for sampler in [
    Sampler("ancestral", ENGINE, INITIAL, "one completion at temperature 1",
            kernel=lambda spec, model: kernels.AncestralSampler(model)),
    Sampler("low-temp", ENGINE, INITIAL, "one completion at temperature tau = 1/alpha",
            kernel=lambda spec, model: kernels.LowTemperatureSampler(model, tau=spec.tau)),
    Sampler("random-cut", ENGINE, MARKOV, "suffix MH with a uniform cut", mh=True,
            kernel=lambda spec, model: kernels.RandomCutMH(model, tau=spec.tau)),
    Sampler("entropy-cut", ENGINE, MARKOV, "suffix MH with an entropy cut", options=("cut", "cut_params"), mh=True,
            kernel=lambda spec, model: kernels.EntropyCutMH(model, cut=spec.make_cut(), tau=spec.tau)),
    Sampler("blockwise", summary="the block-wise schedule: a block of tokens, then MH steps, per block", **_blockwise),
    # Published recipes (DESIGN section 3): the block-wise schedule with the random cut of Karan &
    # Du, or the entropy-jump cut of ECMH (beta = 4); the schedule's defaults are the published ones.
    Sampler("karan-du", summary="preset: the block-wise schedule with Karan & Du's uniform cut",
            preset=(("cut", "uniform"), ("cut_params", ())), **_blockwise),
    Sampler("ecmh", summary="preset: the block-wise schedule with ECMH's entropy-jump cut (beta = 4)",
            preset=(("cut", "entropy_jump"), ("cut_params", (("power", 4.0),))), **_blockwise),
    Sampler("power-smc", POPULATION, ONE, "one particle of a Power-SMC run", options=("num_particles", "smc_block_size"),
            kernel=lambda spec, model: kernels.PowerSMC(model, num_particles=spec.num_particles,
                                                        block_size=spec.smc_block_size, tau=spec.tau),
            rows=lambda spec: spec.num_particles),
    Sampler("tmc", POPULATION, ONE, "scalable power sampling: candidates scored by look-ahead rollouts",
            options=("num_candidates", "num_rollouts", "horizon"),
            kernel=lambda spec, model: kernels.ScalablePowerSampler(model, num_candidates=spec.num_candidates,
                                                                    num_rollouts=spec.num_rollouts,
                                                                    horizon=spec.horizon, tau=spec.tau),
            rows=lambda spec: spec.num_candidates * spec.num_rollouts),
    Sampler("best-of-n", ENGINE, ONE, "the likeliest of ancestral draws that fit a token budget",
            options=("bon_budget",),
            kernel=lambda spec, model: kernels.BestOfN(model, spec.checked_budget(),
                                                       tau=1.0 if spec.tau is None else spec.tau)),
]}
SAMPLERS = tuple(REGISTRY)
# Without a budget, best-of-n spends what the first of these with records spent per problem.
BUDGET_SOURCES = ("ecmh", "entropy-cut", "karan-du", "random-cut", "blockwise")


def get_sampler(name: str) -> Sampler:
    if name not in REGISTRY:
        raise ValueError(f"sampler: unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return REGISTRY[name]


def _option(default, help: str, *aliases: str, parse=int):
    """A sampler option: its default, its help, how the command line parses it, and the command
    line's older spellings of it."""
    return dataclasses.field(default=default, metadata=dict(help=help, aliases=aliases, parse=parse))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerOptions:
    """Every sampler's options, spelled once: `SamplerSpec`, `EvalSettings` (and so a results
    directory's settings.json) and the command line's flags (`num_mcmc_steps` is
    `--num-mcmc-steps`) take these names. A preset fixes its cut; `top_k` truncates target and
    proposal alike (`ppl_ecmh.lm.truncation`), and None, the default, is the exact target."""

    tau: float | None = _option(None, "proposal temperature (default 1/alpha)", parse=float)
    cut: str = _option("mixture", "cut distribution for entropy-cut and blockwise (the presets karan-du and ecmh "
                       "fix their own): uniform, entropy, entropy_jump (the published cut), mixture (eps * uniform "
                       "+ (1 - eps) * entropy_jump, eps=0.1: keeps every cut reachable)", parse=str)
    cut_params: tuple[tuple[str, float], ...] = _option((), "cut parameter, e.g. power=4, beta=1, eps=0.1 "
                                                        "(repeatable)", parse=None)  # --cut-param NAME=VALUE
    block_size: int = _option(192, "blockwise: tokens per block")
    num_mcmc_steps: int = _option(10, "blockwise: MH steps per block", "--mcmc-steps")
    top_k: int | None = _option(None, "truncate target and proposal to the k likeliest tokens (published code: 50); "
                                "default: the exact, untruncated target")
    num_particles: int = _option(16, "power-smc: particles per chain or problem", "--particles")
    smc_block_size: int = _option(1, "power-smc: tokens per SMC step")
    bon_budget: int | None = _option(None, "best-of-n: tokens per draw and chain (eval: per problem; default there: "
                                     "the mean cost of the records of ecmh, entropy-cut, karan-du, random-cut or "
                                     "blockwise, listed before best-of-n)")
    num_candidates: int = _option(4, "tmc: likeliest next tokens considered per step", "--candidates")
    num_rollouts: int = _option(4, "tmc: look-ahead rollouts per candidate", "--rollouts")
    horizon: int = _option(8, "tmc: tokens per look-ahead rollout")

    def __post_init__(self):
        object.__setattr__(self, "cut_params", tuple((name, float(value)) for name, value in self.cut_params))
        if self.top_k is not None:
            check_positive_int("top_k", self.top_k)

    def sampler_options(self) -> dict:
        """The option values, as keywords for another SamplerOptions."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(SamplerOptions)}


@dataclasses.dataclass(frozen=True)
class SamplerSpec(SamplerOptions):
    """A sampler by name with its options (cut given by name, see `ppl_ecmh.samplers.cuts.get_cut`): the
    unit the rest of the library passes around."""

    name: str

    def __post_init__(self):
        for field, value in get_sampler(self.name).preset:
            object.__setattr__(self, field, value)
        super().__post_init__()

    @property
    def sampler(self) -> Sampler:
        return REGISTRY[self.name]

    def schedule(self, alpha: float, max_new_tokens: int, num_draws: int) -> Schedule:
        """The engine's description of one chain with `num_draws` draws (warmup included), as its
        NumPyro kernel runs it (an engine sampler's)."""
        return self.make_kernel().schedule(alpha, max_new_tokens, num_draws)

    def default_warmup(self, max_new_tokens: int) -> int:
        """Draws discarded by default: for a block-wise sampler its stages before the last, whose
        draws are shorter completions of intermediate targets, not draws of pi_alpha."""
        return math.ceil(max_new_tokens / self.block_size) - 1 if self.sampler.blockwise else 0

    def make_cut(self):
        return get_cut(self.cut, **dict(self.cut_params)) if "cut" in self.sampler.options else Uniform()

    def checked_budget(self) -> int:
        if self.bon_budget is None:
            raise ValueError(f"bon_budget: {self.name} needs a token budget per draw (match an MH run's tokens)")
        return check_positive_int("bon_budget", self.bon_budget)

    def make_kernel(self, model=power_model):
        return self.sampler.kernel(self, model)

    def recorded_settings(self, cut) -> dict:
        """The sampler's own settings, as a run records them: its preset, top_k, the cut it used
        and the options it reads."""
        sampler = self.sampler
        settings = dict(preset=self.name if sampler.preset else None, top_k=self.top_k)
        if cut is not None:
            settings["cut"] = repr(cut)
        settings |= {option: getattr(self, option) for option in sampler.options
                     if option not in ("cut", "cut_params")}
        return settings
