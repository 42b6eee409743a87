"""Running a sampler on a loaded model, with a progress bar and every draw's tokens and statistics
kept. The per-chain samplers (`Sampler.runs_on` ENGINE) run on the continuous-batching engine
(`ppl_ecmh.engine`): every (prompt, chain) is a work item for W slots. The population samplers
(Power-SMC, TMC) and runs with a token budget go through the sampler's NumPyro kernel, one jitted
draw per loop iteration (a per-chain kernel drives the engine's slots itself). Both key a chain
as NumPyro's MCMC would (`engine.chain_keys`): a seed draws the same tokens either way."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ppl_ecmh import parallel
from ppl_ecmh.engine import Engine, Schedule, WorkItem, chain_keys, memory
from ppl_ecmh.engine.slots import STAT_FIELDS
from ppl_ecmh.lm.generation import padded_completions
from ppl_ecmh.lm.transformer import Transformer
from ppl_ecmh.lm.truncation import truncate
from ppl_ecmh.registry import ENGINE, SamplerSpec
from ppl_ecmh.validation import check_alpha, check_fits_context, check_positive_int

# Slots of the engine by default: where aggregate decode tokens/s stopped growing on a 2-core CPU
# (benchmarks/engine.py, float32, 160 + 384 cache): qwen2.5-coder-0.5b 14, 43, 68, 83, 101 tokens/s
# at 1, 8, 16, 32, 64 rows; smollm2-135m 40, 131, 184, 213, 211. docs/design.md section 7.
DEFAULT_WIDTH = 64


@dataclasses.dataclass
class Run:
    """Draws of one sampler: tokens and entropies [chains, draws, (prompts,) T], statistics
    [chains, draws, (prompts)] (the prompts axis when a batch of prompts was given)."""

    settings: dict
    tokens: np.ndarray
    entropy: np.ndarray
    stats: dict
    wall_time: np.ndarray  # seconds per draw [draws] (all chains advance together)
    initial_generated: np.ndarray  # tokens decoded before the first kept draw [chains, (prompts)]: the
    # initial completion (and, on the engine, the warmup draws)
    last_step: dict | None = None  # of the per-chain samplers, of each draw's last step (`slots.LAST_STEP_FIELDS`):
    # its decision and probability, and what it did not keep, tokens and entropies [chains, draws,
    # (prompts), T] and length

    @property
    def initial_tokens_generated(self) -> int:
        return int(self.initial_generated.sum())

    @property
    def token_arrays(self) -> list[np.ndarray]:
        """Every array of token ids the run holds: its draws, and their last steps' unkept sides
        (what `LoadedModel.pieces` needs to show them as text)."""
        return [self.tokens] + ([] if self.last_step is None else [self.last_step["unkept_tokens"]])

    @property
    def total_tokens(self) -> int:
        return int(self.stats["num_generated"].sum()) + self.initial_tokens_generated

    def for_prompt(self, index: int) -> "Run":
        """The draws of prompt `index` of a run over a batch of prompts, as a run of that prompt
        (for `ppl_ecmh.analysis.diagnostics.to_inference_data`); its wall time stays the whole run's."""
        prompts = self.settings["prompt_tokens"]
        if not prompts or not isinstance(prompts[0], list):
            raise ValueError("for_prompt: this run has a single prompt")
        if not -len(prompts) <= index < len(prompts):
            raise IndexError(f"for_prompt: prompt {index} of a run over {len(prompts)} prompts")
        pick = lambda array: array[:, :, index]
        return Run(settings=self.settings | {"prompt_tokens": prompts[index]}, tokens=pick(self.tokens),
                   entropy=pick(self.entropy), stats={name: pick(value) for name, value in self.stats.items()},
                   wall_time=self.wall_time, initial_generated=self.initial_generated[:, index],
                   last_step=None if self.last_step is None else {name: pick(value) for name, value in self.last_step.items()})


def run_sampler(lm, prompt: Sequence[int] | Sequence[Sequence[int]], spec: SamplerSpec, *, alpha: float,
                max_new_tokens: int, num_chains: int = 4, num_draws: int = 10, num_warmup: int | None = None, seed: int = 0,
                token_budget: int | None = None, prompt_block: int | None = None, progress: bool = True,
                description: str | None = None, width: int = DEFAULT_WIDTH, mesh=None, work_ids=None) -> Run:
    """Warmup then up to `num_draws` kept draws per chain; with `token_budget`, stop after the first
    kept draw at which all chains together have decoded at least that many tokens (warmup and the
    initial draw included), so samplers can be compared at equal cost. `num_draws=0` (no warmup)
    keeps the initial completion as the only draw: one ancestral or low-temperature sample each.
    `num_warmup=None` is the sampler's default (`SamplerSpec.default_warmup`): 0, or for a
    block-wise sampler its stages before the last.
    A batch of prompts runs as independent targets side by side (see `LanguageModelSequence`);
    runs with equal settings and shapes (fix `prompt_block`) reuse one compiled program. Engine
    samplers (`Sampler.runs_on`, without a token budget) run their chains in `width` slots, split
    over `mesh` (`ppl_ecmh.parallel.make_mesh`) when given; the others run on one device. Each
    prompt's chains are keyed by its entry of `work_ids` (default: its index; see
    `LanguageModelSequence`), so a prompt draws the same tokens in any batch."""
    alpha = check_alpha(alpha)
    num_chains = check_positive_int("chains", num_chains)
    num_draws = check_positive_int("draws", num_draws, minimum=0)
    if num_warmup is None:  # the sampler's default, unless the initial completion is the only draw
        num_warmup = spec.default_warmup(max_new_tokens) if num_draws else 0
    num_warmup = check_positive_int("warmup", num_warmup, minimum=0)
    if num_draws == 0 and num_warmup:
        raise ValueError("draws: must be >= 1 when warmup draws are discarded")
    if token_budget is not None:
        token_budget = check_positive_int("token_budget", token_budget)
    options = dict(alpha=alpha, max_new_tokens=max_new_tokens, num_chains=num_chains, num_draws=num_draws,
                   num_warmup=num_warmup, seed=seed, prompt_block=prompt_block, progress=progress,
                   description=description)
    if spec.sampler.runs_on == ENGINE and token_budget is None:
        return run_on_engine(lm, prompt, spec, width=width, mesh=mesh, work_ids=work_ids, **options)
    return run_with_kernel(lm, prompt, spec, token_budget=token_budget, work_ids=work_ids, **options)


def run_with_kernel(lm, prompt, spec: SamplerSpec, *, alpha: float, max_new_tokens: int, num_chains: int,
                 num_draws: int, num_warmup: int, seed: int, token_budget: int | None = None,
                 prompt_block: int | None = None, progress: bool = True, description: str | None = None,
                 work_ids=None) -> Run:
    """`run_sampler` through the sampler's NumPyro kernel: every chain and prompt a row of one
    state, one jitted draw at a time for all rows."""
    kernel, step = _kernel_and_step(spec, alpha, max_new_tokens)
    lm = truncate(lm, spec.top_k)
    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)
    tick = time.perf_counter()
    state = kernel.init(keys, num_warmup, None, (lm, prompt),
                        dict(alpha=alpha, max_new_tokens=max_new_tokens, prompt_block=prompt_block, work_ids=work_ids))
    initial = np.asarray(state.num_generated)
    tokens, entropy, stats, wall = [], [], {f: [] for f in STAT_FIELDS}, []
    steps = {}  # of each draw's last MH step, for the samplers that have one

    def keep(state, seconds, last_step):
        tokens.append(np.asarray(state.z[kernel.target.site]))
        entropy.append(np.asarray(state.entropy))
        for field in STAT_FIELDS:
            stats[field].append(np.asarray(getattr(state, field)))
        for field, value in state.extra.items():
            stats.setdefault(field, []).append(np.asarray(value))
        for field, value in (last_step or {}).items():
            steps.setdefault(field, []).append(np.asarray(value))
        wall.append(seconds)

    if num_draws == 0:  # the initial completion is the draw, and its tokens are counted there
        keep(jax.block_until_ready(state), time.perf_counter() - tick, last_step=None)
        initial = np.zeros_like(initial)
    generated, started = int(initial.sum()), time.perf_counter()
    bar = tqdm(total=num_warmup + num_draws, desc=description or spec.name, disable=not progress, unit="draw")
    for index in range(num_warmup + num_draws):
        tick = time.perf_counter()
        state = jax.block_until_ready(step(state))
        seconds = time.perf_counter() - tick
        generated += int(np.asarray(state.num_generated).sum())
        bar.update(1)
        bar.set_postfix(tok_s=f"{generated / (time.perf_counter() - started):.1f}",
                        acc=f"{float(np.mean(state.accept_prob)):.2f}")
        if index >= num_warmup:
            keep(state, seconds, state.last_step)
            if token_budget is not None and generated >= token_budget:
                break
    bar.close()
    settings = dict(sampler=spec.name, alpha=alpha, tau=kernel.tau, max_new_tokens=max_new_tokens,
                    num_chains=num_chains, num_draws=len(wall), num_warmup=num_warmup, seed=seed,
                    token_budget=token_budget,
                    prompt_tokens=_prompt_setting(kernel.target.sequence))
    settings |= spec.recorded_settings(getattr(kernel, "cut", None))
    return Run(
        settings=settings,
        tokens=np.stack(tokens, axis=1),
        entropy=np.stack(entropy, axis=1),
        stats={f: np.stack(v, axis=1) for f, v in stats.items()},
        wall_time=np.asarray(wall),
        initial_generated=initial,
        last_step={f: np.stack(v, axis=1) for f, v in steps.items()} or None,
    )


RECORDED_FIELDS = ("entropy",) + STAT_FIELDS + ("last_step",)  # the `extra_fields` a NumPyro MCMC run needs to become a Run


def run_of_mcmc(mcmc) -> Run:
    """A `numpyro.infer.MCMC` run of one of this package's kernels as a Run, for
    `diagnostics.to_inference_data`, `ppl_ecmh.explore` and `diagnostics.save`. Run it with
    `extra_fields=RECORDED_FIELDS`. NumPyro keeps neither the warmup's draws nor the time, so the
    Run counts only the kept draws' tokens and has no wall time (nan)."""
    kernel = mcmc.sampler
    target = getattr(kernel, "target", None)
    if target is None:
        raise ValueError("run_of_mcmc: the MCMC's kernel is not one of ppl_ecmh's, or it has not run yet")
    extra = mcmc.get_extra_fields(group_by_chain=True)
    if missing := [field for field in RECORDED_FIELDS if field not in extra]:
        raise ValueError(f"run_of_mcmc: the run lacks the fields {', '.join(missing)}; run MCMC with "
                         "extra_fields=ppl_ecmh.runner.RECORDED_FIELDS")
    tokens = np.asarray(mcmc.get_samples(group_by_chain=True)[target.site])
    chains, draws = tokens.shape[:2]
    settings = dict(sampler=type(kernel).__name__, alpha=target.alpha, tau=kernel.tau,
                    max_new_tokens=target.max_new_tokens, num_chains=chains, num_draws=draws,
                    num_warmup=mcmc.num_warmup, seed=None, token_budget=None,
                    prompt_tokens=_prompt_setting(target.sequence))
    if getattr(kernel, "cut", None) is not None:
        settings["cut"] = repr(kernel.cut)
    last_step = extra["last_step"]  # None for the population samplers
    return Run(settings=settings, tokens=tokens, entropy=np.asarray(extra["entropy"]),
               stats={field: np.asarray(extra[field]) for field in STAT_FIELDS}, wall_time=np.full(draws, np.nan),
               initial_generated=np.zeros(tokens.shape[:1] + tokens.shape[2:-1], np.int32),
               last_step=None if last_step is None else {name: np.asarray(value) for name, value in last_step.items()})


def engine_items(prompts, rng_key, num_chains: int, work_ids=None) -> list[WorkItem]:
    """The work of a run: one chain per (prompt, chain), tagged (prompt index, chain) and keyed as
    a NumPyro kernel keys its rows (`engine.chain_keys`; work ids default to the prompts' indices),
    so a seed draws the same tokens through `MCMC` and `ppl-ecmh sample`."""
    work_ids = range(len(prompts)) if work_ids is None else work_ids
    keys = np.asarray(chain_keys(rng_key, num_chains, work_ids)).reshape(num_chains, len(prompts), 2)
    return [WorkItem(tuple(prompt), keys[chain, index], (index, chain))
            for index, prompt in enumerate(prompts) for chain in range(num_chains)]


def fitted_width(lm, prompt_block: int, max_new_tokens: int, requested: int | None, mesh=None,
                 num_draws: int = 1) -> int:
    """The engine's width for a run of `lm` whose chains keep `num_draws` draws (warmup included):
    `requested` if it fits the device (else an error naming the widest that does), or when None
    the widest power of two that fits an accelerator, DEFAULT_WIDTH on a CPU or for a model
    without a transformer's config (`engine.memory`)."""
    if not isinstance(lm, Transformer):
        return requested or DEFAULT_WIDTH
    data, model = (1, 1) if mesh is None else (mesh.shape[parallel.DATA], mesh.shape[parallel.MODEL])
    return memory.engine_width(lm.config, jnp.dtype(lm.dtype).name, prompt_block, max_new_tokens, requested,
                               DEFAULT_WIDTH, memory.device_memory(jax.devices()[0]), data, model, num_draws)


def run_on_engine(lm, prompt, spec: SamplerSpec, *, alpha: float, max_new_tokens: int, num_chains: int,
                  num_draws: int, num_warmup: int, seed: int, prompt_block: int | None = None, progress: bool = True,
                  description: str | None = None, width: int = DEFAULT_WIDTH, mesh=None, work_ids=None) -> Run:
    """`run_sampler` for the engine samplers: every chain a work item, `width` slots (over `mesh`)."""
    batched = not isinstance(prompt[0], (int, np.integer))
    prompts = [list(p) for p in prompt] if batched else [list(prompt)]
    prompt_block = prompt_block or max(len(p) for p in prompts)
    check_fits_context(lm, prompt_block, max_new_tokens)
    lm = truncate(lm, spec.top_k)
    schedule = spec.schedule(alpha, max_new_tokens, num_warmup + num_draws)
    if not num_draws:  # the initial completion is the draw
        schedule = Schedule.independent(max_new_tokens, alpha=alpha, tau=schedule.tau)
    items = engine_items(prompts, jax.random.PRNGKey(seed), num_chains, work_ids)
    width = parallel.data_parallel_width(min(check_positive_int("width", width), len(items)), mesh)
    engine = Engine(lm, schedule, width=width, prompt_block=prompt_block, mesh=mesh)
    kept = max(1, num_draws)
    shape = (num_chains, kept, len(prompts))
    tokens = np.zeros(shape + (max_new_tokens,), np.int32)
    entropy = np.zeros(shape + (max_new_tokens,), np.float32)
    stats = {name: np.zeros(shape, np.float32 if name in ("log_target", "accepted", "accept_prob") else np.int32)
             for name in STAT_FIELDS}
    last_step = dict(last_accepted=np.zeros(shape, bool), last_accept_prob=np.zeros(shape, np.float32),
                     unkept_tokens=np.zeros_like(tokens), unkept_entropy=np.zeros_like(entropy),
                     unkept_length=np.zeros(shape, np.int32))
    initial = np.zeros((num_chains, len(prompts)), np.int32)
    bar = tqdm(total=len(items), desc=description or spec.name, disable=not progress, unit="chain")
    report = lambda engine_stats: bar.set_postfix(
        tok_s=f"{engine_stats.decoded / max(engine_stats.seconds, 1e-9):.1f}", occupancy=f"{engine_stats.occupancy:.2f}")
    for result in engine.run(items, progress=report):
        index, chain = result.item.tag
        own = slice(num_warmup, num_warmup + kept)  # the draws after the warmup
        initial[chain, index] = result.initial_generated + result.stats["num_generated"][:num_warmup].sum()
        tokens[chain, :, index] = padded_completions(result.tokens[own], result.length[own], lm.eos_token_ids[0], lm)
        entropy[chain, :, index] = result.entropy[own]
        for name in stats:
            stats[name][chain, :, index] = result.stats[name][own]
        for name, value in result.last_step.items():
            last_step[name][chain, :, index] = value[own]
        bar.update(1)
    bar.close()
    squeeze = (lambda a: a) if batched else (lambda a: a[:, :, 0])
    settings = dict(sampler=spec.name, alpha=alpha, tau=schedule.tau, max_new_tokens=max_new_tokens,
                    num_chains=num_chains, num_draws=kept, num_warmup=num_warmup, seed=seed, token_budget=None,
                    prompt_tokens=prompts if batched else prompts[0])
    settings |= spec.recorded_settings(None if schedule.fresh or schedule.token_budget else schedule.cut)
    settings["engine"] = dict(width=engine.width, occupancy=engine.stats.occupancy, iterations=engine.stats.iterations,
                              decoded=engine.stats.decoded, saved=engine.stats.saved, restored=engine.stats.restored)
    return Run(settings=settings, tokens=squeeze(tokens), entropy=squeeze(entropy),
               stats={name: squeeze(value) for name, value in stats.items()},
               wall_time=np.full(kept, engine.stats.seconds / kept), initial_generated=initial if batched else initial[:, 0],
               last_step={name: squeeze(value) for name, value in last_step.items()})


@functools.lru_cache(maxsize=4)
def _kernel_and_step(spec: SamplerSpec, alpha: float, max_new_tokens: int):
    """A kernel and its jitted step, kept so that runs with the same settings compile once (what
    the step reads off the kernel besides array shapes is exactly these settings)."""
    kernel = spec.make_kernel()
    # The weights go in as an argument and are not returned: an output of a compiled program is a
    # fresh buffer, so returning the state's weights would copy the whole model on every draw.
    advance = jax.jit(lambda state, lm: kernel.sample(state._replace(lm=lm), (), {})._replace(lm=None))
    return kernel, lambda state: advance(state._replace(lm=None), state.lm)._replace(lm=state.lm)


def _prompt_setting(sequence) -> list:
    """The prompt's token ids, or a list of them for a batch of prompts."""
    prompts = [list(p) for p in sequence.prompts]
    return prompts if sequence.batch_shape else prompts[0]
