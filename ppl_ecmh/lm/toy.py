"""Toy language models whose completions can be enumerated, with exact pi_alpha.

`TabularLM` implements the same interface as the transformer (`ppl_ecmh.lm.interface`): its logits
are looked up in a table indexed by the whole token string so far, so it can express any
autoregressive model on a small vocabulary and short horizon. Its "cache" is the id of the string
ending at each position, so restarting from an earlier position works exactly as for the
transformer's KV cache.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TabularLM:
    """Next-token logits table over every token string of length <= `context`."""

    table: jax.Array  # [num_strings + 1, V]; row id(s) holds the logits after string s
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    eos_token_ids: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    max_length: int = dataclasses.field(metadata=dict(static=True))

    @staticmethod
    def string_id(tokens: Sequence[int], vocab_size: int) -> int:
        """Bijective base-V numbering of token strings (the empty string is 0)."""
        index = 0
        for token in tokens:
            index = index * vocab_size + int(token) + 1
        return index

    @classmethod
    def from_function(
        cls, next_logits: Callable[[tuple[int, ...]], Sequence[float]], vocab_size: int, eos_id: int, context: int
    ) -> "TabularLM":
        """Tabulate `next_logits(prefix)` for every string of 1..context tokens."""
        rows = cls.string_id([vocab_size - 1] * context, vocab_size) + 1
        table = np.zeros((rows, vocab_size), np.float32)
        for length in range(1, context + 1):
            for prefix in itertools.product(range(vocab_size), repeat=length):
                table[cls.string_id(prefix, vocab_size)] = next_logits(prefix)
        return cls(jnp.asarray(table), vocab_size, (eos_id,), context)

    def init_cache(self, batch_size: int, length: int) -> jax.Array:
        return jnp.zeros((batch_size, length), jnp.int32)

    def within(self, span: int | None) -> "TabularLM":
        return self  # no loop over the cache

    def forward(self, cache: jax.Array, tokens: jax.Array, positions: jax.Array):
        rows = jnp.arange(tokens.shape[0])

        def one_token(cache, inputs):
            token, position = inputs
            before = jnp.where(position > 0, cache[rows, jnp.maximum(position - 1, 0)], 0)
            string = before * self.vocab_size + token + 1
            cache = cache.at[rows, position].set(string, mode="drop")
            return cache, self.table[jnp.minimum(string, self.table.shape[0] - 1)]

        cache, logits = jax.lax.scan(one_token, cache, (tokens.T, positions.T))
        return logits.transpose(1, 0, 2), cache


@dataclasses.dataclass(frozen=True)
class ToyProblem:
    """A tabular LM with a prompt and horizon, and the exact distribution of its completions."""

    lm: TabularLM
    prompt: tuple[int, ...]
    max_new_tokens: int
    next_logits: Callable[[tuple[int, ...]], Sequence[float]]

    def completions(self) -> list[tuple[tuple[int, ...], float]]:
        """Every completion (ending at EOS or at max_new_tokens) with its exact log p, float64."""
        eos = self.lm.eos_token_ids
        out = []

        def walk(completion: tuple[int, ...], log_p: float):
            if (completion and completion[-1] in eos) or len(completion) == self.max_new_tokens:
                out.append((completion, log_p))
                return
            logits = np.asarray(self.next_logits(self.prompt + completion), np.float64)
            log_probs = logits - np.logaddexp.reduce(logits)
            for token in range(self.lm.vocab_size):
                walk(completion + (token,), log_p + log_probs[token])

        walk((), 0.0)
        return out

    def power_distribution(self, alpha: float) -> dict[tuple[int, ...], float]:
        """Exact pi_alpha(x) proportional to p(x)^alpha over all completions."""
        completions = self.completions()
        logits = np.array([alpha * lp for _, lp in completions])
        probs = np.exp(logits - np.logaddexp.reduce(logits))
        return {x: float(p) for (x, _), p in zip(completions, probs)}


def make_problem(next_logits, vocab_size: int, eos_id: int, prompt: Sequence[int], max_new_tokens: int) -> ToyProblem:
    context = len(prompt) + max_new_tokens
    lm = TabularLM.from_function(next_logits, vocab_size, eos_id, context)
    return ToyProblem(lm, tuple(prompt), max_new_tokens, next_logits)


def markov_problem(vocab_size: int = 4, max_new_tokens: int = 4, seed: int = 0, scale: float = 1.5) -> ToyProblem:
    """A first-order Markov chain with random transition logits; token vocab_size-1 is EOS.

    Random logits (scale controls how peaked) give completions of varying length and positions of
    varying entropy, which is what separates a right cut correction from a wrong one.
    """
    rng = np.random.default_rng(seed)
    transitions = rng.normal(0.0, scale, size=(vocab_size, vocab_size))
    return make_problem(lambda prefix: transitions[prefix[-1]], vocab_size, vocab_size - 1, (0,), max_new_tokens)


def random_tree_problem(
    vocab_size: int = 4, max_new_tokens: int = 4, seed: int = 0, scales: Sequence[float] = (0.2, 4.0)
) -> ToyProblem:
    """Independent random logits after every prefix; token vocab_size-1 is EOS.

    Each prefix draws its logit scale from `scales` (flat or peaked), and the first token is
    peaked, so the entropy profile jumps up and down and completions have every length: a kernel
    that drops any part of the cut correction (uniform, entropy or entropy-jump) is visibly wrong.
    """
    rng = np.random.default_rng(seed)
    rows = TabularLM.string_id([vocab_size - 1] * (1 + max_new_tokens), vocab_size) + 1
    table = rng.normal(size=(rows, vocab_size)) * rng.choice(scales, size=(rows, 1))
    table[TabularLM.string_id((0,), vocab_size)] *= max(scales) / np.abs(table[1]).max()
    return make_problem(
        lambda prefix: table[TabularLM.string_id(prefix, vocab_size)], vocab_size, vocab_size - 1, (0,), max_new_tokens
    )


def pivotal_problem() -> ToyProblem:
    """The paper's pivotal-token example: "b" is the likelier first token (0.6 vs 0.4) but "a b" is
    the likeliest completion, because after "b" the model is spread over many continuations.

    Tokens: 0 = prompt/BOS, 1 = "a", 2 = "b", 3 = "c", 4 = EOS. Per-token low temperature favours
    "b ..."; the power distribution favours "a b".
    """
    a, b, c, eos = 1, 2, 3, 4
    log = lambda probs: np.log(np.maximum(np.asarray(probs, np.float64), 1e-12))

    def next_logits(prefix):
        completion = prefix[1:]
        if len(completion) == 0:
            return log([0, 0.4, 0.6, 0, 0])
        if completion[-1] == eos:
            return log([0.2] * 5)  # never reached by sampling; any row works
        if len(completion) == 1:
            return log([0, 0.02, 0.96, 0.02, 0]) if completion[0] == a else log([0, 0.34, 0.33, 0.33, 0])
        return log([0, 0, 0, 0, 1.0])

    return make_problem(next_logits, 5, eos, (0,), 3)
