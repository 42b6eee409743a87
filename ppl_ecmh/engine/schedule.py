"""What each step of a chain does: the one description every engine sampler is (DESIGN section 3).

A chain is a sequence of steps, grouped in stages of `1 + num_mcmc_steps`: the first step of a
stage extends the current sample from its end up to the stage's length cap (drawn from the
proposal and always kept), the others are suffix-MH steps on completions capped at that length.

- independent (ancestral, low-temperature): one stage as long as `max_new_tokens`, no MH step:
  the chain is a single fresh completion;
- suffix MH (random cut, entropy cut): one stage, the initial completion then `num_mcmc_steps`
  MH steps, a draw after each;
- thinned suffix MH (the NumPyro adapters' `steps_per_draw`): the MH steps of one stage from a
  given completion, one draw after the last;
- best-of-N: candidates from scratch until `token_budget` tokens are spent, the best kept (the
  chain ends with its budget, so its number of steps varies; one draw at the end);
- block-wise: stages of `block_size` tokens, a draw at the end of each (the kernel's semantics:
  a sample that ended with EOS is not extended, its MH steps go on in every later stage).

Step numbers key a chain's randomness, so a chain's draws depend only on its keys, never on the
slot it runs in or on what the other slots do.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ppl_ecmh.cuts import CutDistribution, Uniform
from ppl_ecmh.lm.generation import ends_with_eos, mean_log_likelihood


@dataclasses.dataclass(frozen=True)
class Schedule:
    max_new_tokens: int
    block_size: int
    num_mcmc_steps: int
    draw_every_step: bool  # a draw after each MH step (suffix MH), else after each stage
    num_stages: int
    alpha: float
    tau: float
    cut: CutDistribution = Uniform()
    drop_cut_ratio: bool = False  # only to show that the tests catch a wrong kernel
    token_budget: int | None = None  # best-of-N: tokens a chain spends on candidates

    @classmethod
    def independent(cls, max_new_tokens: int, *, alpha: float, tau: float) -> "Schedule":
        return cls(max_new_tokens, max_new_tokens, 0, False, 1, alpha, tau)

    @classmethod
    def suffix_mh(cls, max_new_tokens: int, num_mcmc_steps: int, *, cut, alpha: float, tau: float) -> "Schedule":
        return cls(max_new_tokens, max_new_tokens, num_mcmc_steps, True, 1, alpha, tau, cut)

    @classmethod
    def best_of_n(cls, max_new_tokens: int, token_budget: int, *, alpha: float, tau: float) -> "Schedule":
        """Compute-matched best-of-N (`ppl_ecmh.baselines.best_of_n`): every step a candidate from
        scratch, capped at what is left of `token_budget`; each candidate decodes a token at least,
        so `token_budget` steps always suffice."""
        return cls(max_new_tokens, max_new_tokens, token_budget - 1, False, 1, alpha, tau, token_budget=token_budget)

    @classmethod
    def thinned(cls, max_new_tokens: int, num_mcmc_steps: int, *, cut, alpha: float, tau: float) -> "Schedule":
        """`num_mcmc_steps` suffix-MH steps of a completion that exists already (step 0, its
        extension, is never run), one draw after the last: a NumPyro draw with thinning."""
        return cls(max_new_tokens, max_new_tokens, num_mcmc_steps, False, 1, alpha, tau, cut)

    @classmethod
    def blockwise(cls, max_new_tokens: int, block_size: int, num_mcmc_steps: int, *, cut, alpha: float,
                  tau: float, num_stages: int | None = None) -> "Schedule":
        """Stages of `block_size` tokens until `max_new_tokens`; more stages than that (`num_stages`)
        are further rounds of MH steps on the whole target, as the kernel's later draws are."""
        grown = math.ceil(max_new_tokens / block_size)
        return cls(max_new_tokens, block_size, num_mcmc_steps, False, max(grown, num_stages or grown), alpha, tau, cut)

    @property
    def steps_per_stage(self) -> int:
        return 1 + self.num_mcmc_steps

    @property
    def num_steps(self) -> int:
        return self.num_stages * self.steps_per_stage

    @property
    def draws_per_stage(self) -> int:
        return self.num_mcmc_steps if self.draw_every_step and self.num_mcmc_steps else 1

    @property
    def num_draws(self) -> int:
        return self.num_stages * self.draws_per_stage

    @property
    def initial_steps(self) -> range:
        """Steps before the first draw: suffix MH's initial completion."""
        return range(1 if self.draw_every_step and self.num_mcmc_steps else 0)

    # Per-step facts, as jnp functions of step numbers (any shape).

    def is_extension(self, step):
        return step % self.steps_per_stage == 0

    def limit(self, step):
        """Completion length cap of a step: its stage's end."""
        return jnp.minimum((step // self.steps_per_stage + 1) * self.block_size, self.max_new_tokens)

    def draw_index(self, step):
        """The draw a step records, or -1 when it records none."""
        stage, within = step // self.steps_per_stage, step % self.steps_per_stage
        if self.draw_every_step and self.num_mcmc_steps:
            return jnp.where(within > 0, stage * self.num_mcmc_steps + within - 1, -1)
        return jnp.where(within == self.num_mcmc_steps, stage, -1)

    # The host's view: which steps make up a draw, and which of them its statistics describe.

    def steps_of_draw(self, draw: int) -> range:
        if self.draw_every_step and self.num_mcmc_steps:
            stage, within = divmod(draw, self.num_mcmc_steps)
            step = stage * self.steps_per_stage + within + 1
            return range(step, step + 1)
        return range(draw * self.steps_per_stage, (draw + 1) * self.steps_per_stage)

    def draw_statistics(self, steps: dict) -> dict:
        """Per-draw statistics [num_draws] from one chain's per-step records [num_steps], as the
        lockstep kernels report them: a draw's MH steps (its extension when it has none) give
        `accepted` (the fraction), `accept_prob` (the mean), `cut` (the last), the suffix lengths
        (sums); `num_generated` counts every token the draw decoded."""
        out = {name: np.zeros(self.num_draws, np.float32 if name.startswith("accept") else np.int32)
               for name in ("accepted", "accept_prob", "cut", "old_suffix_length", "new_suffix_length",
                            "num_generated")}
        if self.token_budget:  # one draw: the best candidate ("accepted" marks each new best)
            out["accepted"][0] = out["accept_prob"][0] = 1.0
            out["new_suffix_length"][0] = steps["new_suffix_length"][np.flatnonzero(steps["accepted"])[-1]]
            out["num_generated"][0] = steps["new_suffix_length"].sum()
            return out
        for draw in range(self.num_draws):
            span = np.asarray(self.steps_of_draw(draw))
            moves = span[span % self.steps_per_stage != 0]
            moves = moves if len(moves) else span
            out["accepted"][draw] = steps["accepted"][moves].mean()
            out["accept_prob"][draw] = steps["accept_prob"][moves].mean()
            out["cut"][draw] = steps["cut"][moves[-1]]
            out["old_suffix_length"][draw] = steps["old_suffix_length"][moves].sum()
            out["new_suffix_length"][draw] = steps["new_suffix_length"][moves].sum()
            out["num_generated"][draw] = steps["new_suffix_length"][span].sum()
        return out

    def initial_tokens(self, steps: dict) -> int:
        """Tokens decoded before the first draw (suffix MH's initial completion)."""
        return int(sum(steps["new_suffix_length"][step] for step in self.initial_steps))


def best_of_n_score(lm, seqs, limit) -> jax.Array:
    """Best-of-N's selection score: mean log p, with candidates that did not finish (EOS or
    `limit`), cut short by the budget, ranked after every finished one."""
    finished = ends_with_eos(lm, seqs) | (seqs.length >= limit)
    return mean_log_likelihood(seqs) + jnp.where(finished, 0.0, -1e6)
