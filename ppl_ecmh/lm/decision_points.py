"""Language models with decision points: a family where pi_alpha over what matters is exact.

A completion is T tokens after a one-token prompt. At d positions the model decides: it draws one
of b branch tokens with probabilities `branch_probs`. Every other position is filler: the main
token (id b) with probability 1 - eps, each other word eps / (V - 1). For `consequence` positions
after a decision, eps is the noise of the branch it took (the state s is that branch); elsewhere
it is the base noise. Branches differ in how noisy the text right after them is, so a branch the
model rarely takes can hold most of pi_alpha's mass, by an amount that does not grow with T: the
pivotal-token picture of ECMH at any length. Distractor positions are uniform over the V words
and change nothing after them: entropy spikes that are not decisions.

The decision tuple B carries everything a suffix-MH chain's moves depend on (`decision_states`,
`log_partition`): with the proposal at tau = 1/alpha the filler tokens cancel from every
acceptance ratio, and the entropy profile, hence any cut distribution, is a function of B
(`ppl_ecmh.evaluation.decision_points` builds the exact kernel on B from this).
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np


PLACEMENTS = {"early": (0.0, 0.25), "spread": (0.0, 1.0), "late": (0.75, 1.0)}  # shares of the completion


def placed(length: int, count: int, placement: str) -> tuple[int, ...]:
    """`count` decision positions evenly inside the placement's share of a `length`-token completion."""
    low, high = PLACEMENTS[placement]
    width = (high - low) * length / count
    return tuple(int(low * length + (i + 0.5) * width) for i in range(count))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecisionLM:
    """A `LanguageModel` (`ppl_ecmh.lm.interface`) whose cache holds the state at each position."""

    logits: jax.Array  # [T + 1, b + 1, V + 1] logits for completion position c in state s (row T: past the end)
    decides: jax.Array  # [T + 1] bool: completion position c is a decision
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    eos_token_ids: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    max_length: int = dataclasses.field(metadata=dict(static=True))

    def init_cache(self, batch_size: int, length: int) -> jax.Array:
        return jnp.zeros((batch_size, length), jnp.int32)

    def within(self, span: int | None) -> "DecisionLM":
        return self  # no loop over the cache

    def forward(self, cache: jax.Array, tokens: jax.Array, positions: jax.Array):
        rows, before_any = jnp.arange(tokens.shape[0]), self.logits.shape[1] - 1
        last = self.logits.shape[0] - 1

        def one_token(cache, inputs):
            token, position = inputs  # the prompt is position 0; completion position c is position c + 1
            previous = jnp.where(position > 0, cache[rows, jnp.maximum(position - 1, 0)], before_any)
            decided = (position > 0) & self.decides[jnp.clip(position - 1, 0, last)]
            state = jnp.where(decided, token, previous)
            cache = cache.at[rows, position].set(state, mode="drop")
            return cache, self.logits[jnp.minimum(position, last), state]

        cache, logits = jax.lax.scan(one_token, cache, (tokens.T, positions.T))
        return logits.transpose(1, 0, 2), cache


@dataclasses.dataclass(frozen=True)
class DecisionPoints:
    """One member of the family. `noise[s]` is the filler noise in the `consequence` positions
    after branch s; `noise[b]` the base noise everywhere else. Token ids: branches 0..b-1, the main
    filler token b, other words up to V - 1, and an EOS (id V) the model never emits, so every
    completion has T tokens."""

    length: int  # T
    positions: tuple[int, ...]  # the decisions' completion positions, increasing
    branch_probs: tuple[float, ...] = (0.6, 0.4)  # p of each branch at every decision
    noise: tuple[float, ...] = (0.05, 0.005, 0.01)  # filler noise after branch 0, 1, ..., then the base
    consequence: int = 16  # positions after a decision whose noise its branch sets
    distractors: tuple[int, ...] = ()  # uniform positions that decide nothing
    vocab_size: int = 16  # V words (branch, main and noise tokens), EOS not counted

    def __post_init__(self):
        b = len(self.branch_probs)
        if not (list(self.positions) == sorted(set(self.positions)) and all(0 <= t < self.length for t in self.positions)):
            raise ValueError(f"positions: increasing completion positions below {self.length}, got {self.positions}")
        if set(self.distractors) & set(self.positions) or not all(0 <= t < self.length for t in self.distractors):
            raise ValueError("distractors: positions below the length that are not decisions")
        if len(self.noise) != b + 1 or not all(0 < eps < 1 for eps in self.noise):
            raise ValueError(f"noise: {b + 1} values in (0, 1) (after each branch, then the base)")
        if not (abs(sum(self.branch_probs) - 1) < 1e-9 and min(self.branch_probs) > 0 and self.vocab_size > b + 1):
            raise ValueError("branch_probs: positive and summing to 1, with fewer branches than words - 1")

    @property
    def num_branches(self) -> int:
        return len(self.branch_probs)

    def logits(self) -> np.ndarray:
        """[T + 1, b + 1, V + 1] float64 log-probabilities of completion position c in state s."""
        b, words = self.num_branches, self.vocab_size
        table = np.full((self.length + 1, b + 1, words + 1), -np.inf)
        since = np.arange(self.length + 1) - self._last_decision()  # positions since the last decision
        for state, eps in enumerate(self.noise):
            eps = np.where(since <= self.consequence, eps, self.noise[-1])[:, None]
            table[:, state, :words] = np.log(eps / (words - 1))
            table[:, state, b] = np.log1p(-eps[:, 0])
        table[list(self.positions), :, :b] = np.log(self.branch_probs)
        table[list(self.positions), :, b:] = -np.inf
        table[list(self.distractors), :, :words] = -np.log(words)
        return table

    def _last_decision(self) -> np.ndarray:
        """[T + 1] the position of the last decision before each completion position (-inf: none)."""
        last = np.full(self.length + 1, -np.inf)
        for position in self.positions:
            last[position + 1 :] = position
        return last

    def lm(self) -> DecisionLM:
        decides = np.zeros(self.length + 1, bool)
        decides[list(self.positions)] = True
        return DecisionLM(jnp.asarray(self.logits(), jnp.float32), jnp.asarray(decides), self.vocab_size + 1,
                          (self.vocab_size,), self.length + 1)

    def tuples(self) -> np.ndarray:
        """Every decision tuple B, [b^d, d], in lexicographic order (`tuple_index` inverts it)."""
        return np.array(list(itertools.product(range(self.num_branches), repeat=len(self.positions))),
                        np.int64).reshape(-1, len(self.positions))

    def tuple_index(self, decisions: np.ndarray) -> np.ndarray:
        """The row of `tuples()` of each decision tuple [..., d]."""
        weights = self.num_branches ** np.arange(len(self.positions))[::-1]
        return np.asarray(decisions) @ weights

    def decision_states(self) -> np.ndarray:
        """[b^d, T]: the state each completion position is drawn in, for every decision tuple."""
        states = np.full((len(self.tuples()), self.length), self.num_branches)
        for j, position in enumerate(self.positions):
            states[:, position + 1 :] = self.tuples()[:, j : j + 1]
        return states

    def decisions_of(self, completions: np.ndarray) -> np.ndarray:
        """The decision tuples [..., d] of completions [..., T]."""
        return np.asarray(completions)[..., list(self.positions)]

    def log_partition(self, alpha: float) -> np.ndarray:
        """[T, b + 1]: log sum_v p(v | c, s)^alpha, the mass p^alpha leaves at position c in state s."""
        return np.logaddexp.reduce(alpha * self.logits()[: self.length], axis=-1)
