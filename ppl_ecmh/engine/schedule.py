"""What each step of a chain does: the one description every per-chain sampler is (DESIGN section 3).

A chain is a sequence of steps, grouped in stages of `1 + num_mcmc_steps`: the first step of a
stage extends the current sample from its end up to the stage's length cap (drawn from the
proposal and always kept), the others are suffix-MH steps on completions capped at that length.

- independent (ancestral, low-temperature): every step a fresh completion from the proposal,
  always kept, a draw after each;
- suffix MH (random cut, entropy cut): one stage, the initial completion then `num_mcmc_steps`
  MH steps, a draw after every `steps_per_draw` of them (1 on the CLI; more is thinning);
- best-of-N: candidates from scratch until `token_budget` tokens are spent, the best kept and
  drawn (a draw's number of steps varies); then the next draw's candidates;
- block-wise: stages of `block_size` tokens, a draw at the end of each (the kernel's semantics:
  a sample that ended with EOS is not extended, its MH steps go on in every later stage).

Step numbers key a chain's randomness, so a chain's draws depend only on its keys, never on the
slot it runs in, on what the other slots do or on where a kernel paused it. A NumPyro kernel runs
a schedule of `OPEN` draws, as many as it is asked for.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ppl_ecmh.lm.generation import ends_with_eos, mean_log_likelihood
from ppl_ecmh.samplers.cuts import CutDistribution, Uniform

OPEN = 2**30  # draws of a schedule without a planned end (a NumPyro kernel's): step numbers stay int32


@dataclasses.dataclass(frozen=True)
class Schedule:
    max_new_tokens: int
    block_size: int
    num_mcmc_steps: int
    steps_per_draw: int  # a draw after every this many MH steps; 0: one at the end of each stage
    num_stages: int
    alpha: float
    tau: float
    cut: CutDistribution = Uniform()
    drop_cut_ratio: bool = False  # only to show that the tests catch a wrong kernel
    token_budget: int | None = None  # best-of-N: tokens each draw spends on candidates
    fresh: bool = False  # every step a completion from scratch, always kept

    @classmethod
    def independent(cls, max_new_tokens: int, num_draws: int = 1, *, alpha: float, tau: float) -> "Schedule":
        return cls(max_new_tokens, max_new_tokens, 0, 0, num_draws, alpha, tau, fresh=True)

    @classmethod
    def suffix_mh(cls, max_new_tokens: int, num_draws: int, *, cut, alpha: float, tau: float,
                  steps_per_draw: int = 1) -> "Schedule":
        return cls(max_new_tokens, max_new_tokens, num_draws * steps_per_draw, steps_per_draw, 1, alpha, tau, cut)

    @classmethod
    def best_of_n(cls, max_new_tokens: int, token_budget: int, num_draws: int = 1, *, alpha: float,
                  tau: float) -> "Schedule":
        """Compute-matched best-of-N (`ppl_ecmh.baselines.best_of_n`): every step a candidate from
        scratch, capped at what is left of `token_budget`; each candidate decodes a token at least,
        so `token_budget` steps always suffice for a draw."""
        return cls(max_new_tokens, max_new_tokens, token_budget - 1, 0, num_draws, alpha, tau,
                   token_budget=token_budget)

    @classmethod
    def blockwise(cls, max_new_tokens: int, block_size: int, num_mcmc_steps: int, *, cut, alpha: float,
                  tau: float, num_stages: int | None = None) -> "Schedule":
        """Stages of `block_size` tokens until `max_new_tokens`; more stages than that (`num_stages`)
        are further rounds of MH steps on the whole target, as the kernel's later draws are."""
        grown = math.ceil(max_new_tokens / block_size)
        return cls(max_new_tokens, block_size, num_mcmc_steps, 0, max(grown, num_stages or grown), alpha, tau, cut)

    def open_ended(self) -> "Schedule":
        """The same chain with `OPEN` draws: a NumPyro kernel's, which draws as long as it is asked."""
        if self.steps_per_draw:
            return dataclasses.replace(self, num_mcmc_steps=OPEN // self.steps_per_draw * self.steps_per_draw)
        return dataclasses.replace(self, num_stages=OPEN)

    @property
    def steps_per_stage(self) -> int:
        return 1 + self.num_mcmc_steps

    @property
    def num_steps(self) -> int:
        return self.num_stages * self.steps_per_stage

    @property
    def num_draws(self) -> int:
        return self.num_stages * (self.num_mcmc_steps // self.steps_per_draw if self.steps_per_draw else 1)

    @property
    def num_initial_steps(self) -> int:
        """Steps before the first draw's: suffix MH's initial completion."""
        return 1 if self.steps_per_draw else 0

    # Per-step facts, as jnp functions of step numbers (any shape).

    def is_extension(self, step):
        return step % self.steps_per_stage == 0

    def limit(self, step):
        """Completion length cap of a step: its stage's end."""
        return jnp.minimum((step // self.steps_per_stage + 1) * self.block_size, self.max_new_tokens)

    def completes_draw(self, step):
        """Whether a step is the last of a draw (best-of-N's end with their budget instead)."""
        within = step % self.steps_per_stage
        if self.steps_per_draw:
            return (within > 0) & (within % self.steps_per_draw == 0)
        return within == self.num_mcmc_steps


def best_of_n_score(lm, seqs, limit) -> jax.Array:
    """Best-of-N's selection score: mean log p, with candidates that did not finish (EOS or
    `limit`), cut short by the budget, ranked after every finished one."""
    finished = ends_with_eos(lm, seqs) | (seqs.length >= limit)
    return mean_log_likelihood(seqs) + jnp.where(finished, 0.0, -1e6)
