"""Exactness on a language model the project's toy classes know nothing about.

`RecurrentLM` is written here against the public `LanguageModel` protocol only (vocab_size,
eos_token_ids, max_length, init_cache, forward): a small recurrent network whose logits depend on
the position and on the whole history, with a pivotal first choice (the likelier first token leads
to diffuse continuations, the other to peaked ones, so p and pi_alpha disagree on it). Its exact
pi_alpha is enumerated through `forward` alone. Every suffix-MH cut at both proposal temperatures
must keep pi_alpha at every seed, and the kernel without the cut ratio must be rejected on it.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_ecmh.lm import generation
from ppl_ecmh.samplers import cuts
from tests import lockstep
from tests.exact import (Comparison, assert_exact_at_every_seed, assert_rejected_at_every_seed, chains_from_exact,
                         exact_draws)

VOCAB, EOS, HIDDEN = 4, 3, 3
PIVOT_POSITION = 1  # the first completion token, after a one-token prompt
PEAK = 2.5  # scale of the logits after first token 2


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RecurrentLM:
    """h_t = tanh(A h_{t-1} + E[x_t] + P[t]); logits of x_{t+1} = s(x_1) W h_t, where the
    scale s is small (diffuse) after first token 1 and large (peaked) after first token 2; the first
    completion token itself is 1 with probability 0.6 and 2 with 0.4."""

    embed: jax.Array  # [V, H]
    position: jax.Array  # [L, H]
    recurrence: jax.Array  # [H, H]
    readout: jax.Array  # [H, V]
    vocab_size: int = dataclasses.field(default=VOCAB, metadata=dict(static=True))
    eos_token_ids: tuple[int, ...] = dataclasses.field(default=(EOS,), metadata=dict(static=True))
    max_length: int = dataclasses.field(default=8, metadata=dict(static=True))

    def init_cache(self, batch_size: int, length: int):
        return jnp.zeros((batch_size, length, HIDDEN)), jnp.zeros((batch_size, length), jnp.int32)

    def within(self, span):
        return self  # no loop over the cache

    def forward(self, cache, tokens, positions):
        rows = jnp.arange(tokens.shape[0])

        def one_token(cache, inputs):
            hidden, history = cache
            token, position = inputs
            before = jnp.where((position > 0)[:, None], hidden[rows, jnp.maximum(position - 1, 0)], 0.0)
            state = jnp.tanh(before @ self.recurrence + self.embed[token] + self.position[position])
            hidden = hidden.at[rows, position].set(state, mode="drop")
            history = history.at[rows, position].set(token, mode="drop")
            first = jnp.where(position >= PIVOT_POSITION, history[rows, PIVOT_POSITION], 0)
            scale = jnp.where(first == 1, 0.3, PEAK)[:, None]
            logits = scale * (state @ self.readout)
            pivot = jnp.log(jnp.array([1e-3, 0.6, 0.4, 1e-3]))
            logits = jnp.where((position == PIVOT_POSITION - 1)[:, None], pivot, logits)
            return (hidden, history), logits

        cache, logits = jax.lax.scan(one_token, cache, (tokens.T, positions.T))
        return logits.transpose(1, 0, 2), cache


def make_model(seed: int = 10) -> RecurrentLM:
    """Seed 10 of a few tried: pi_4 spread out (no completion above 0.34) and the pivot flipped
    (p puts 0.6 on first token 1, pi_4 0.69 on token 2)."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
    return RecurrentLM(normal(VOCAB, HIDDEN), normal(8, HIDDEN, scale=0.5), normal(HIDDEN, HIDDEN, scale=0.8),
                       normal(HIDDEN, VOCAB, scale=1.5))


@dataclasses.dataclass(frozen=True)
class HeldOutProblem:
    lm: RecurrentLM
    prompt: tuple[int, ...] = (0,)
    max_new_tokens: int = 4

    @functools.cached_property
    def completions(self) -> dict[tuple[int, ...], float]:
        """log p of every completion, enumerated through `forward` on each prefix."""
        next_log_probs = jax.jit(lambda tokens: jax.nn.log_softmax(self.lm.forward(
            self.lm.init_cache(1, tokens.shape[1]), tokens, jnp.arange(tokens.shape[1])[None])[0][0, -1]))
        out, frontier = {}, [((), 0.0)]
        while frontier:
            prefix, log_p = frontier.pop()
            log_probs = np.asarray(next_log_probs(jnp.asarray([self.prompt + prefix], jnp.int32)), np.float64)
            for token in range(VOCAB):
                extended, total = prefix + (token,), log_p + log_probs[token]
                done = token == EOS or len(extended) == self.max_new_tokens
                (out.__setitem__(extended, total) if done else frontier.append((extended, total)))
        return out

    def power_distribution(self, alpha: float) -> dict[tuple[int, ...], float]:
        logs = {x: alpha * log_p for x, log_p in self.completions.items()}
        top = max(logs.values())
        weights = {x: np.exp(v - top) for x, v in logs.items()}
        total = sum(weights.values())
        return {x: w / total for x, w in weights.items()}


PROBLEM = HeldOutProblem(make_model())
ALPHA = 4.0
CUTS = {"uniform": cuts.Uniform(), "entropy": cuts.Entropy(beta=0.5), "entropy_jump": cuts.EntropyJump(power=4.0),
        "mixture": cuts.Mixture(cuts.EntropyJump(power=4.0), eps=0.2)}


@functools.cache
def step(cut_name: str, tau: float, drop_cut_ratio: bool = False):
    return lambda key, state, lm, alpha, limit: lockstep.suffix_mh_step(
        key, state, lm, cut=CUTS[cut_name], alpha=alpha, tau=tau, limit=limit, drop_cut_ratio=drop_cut_ratio)


def test_the_model_is_pivotal_and_its_enumeration_is_a_distribution():
    p, pi = PROBLEM.power_distribution(1.0), PROBLEM.power_distribution(ALPHA)
    assert len(p) == 1 + 3 + 9 + 27 + 27 * 4 - 27  # every completion of at most 4 tokens, EOS-terminated or full
    assert abs(sum(np.exp(v) for v in PROBLEM.completions.values()) - 1) < 1e-5
    first = lambda dist, token: sum(prob for x, prob in dist.items() if x[0] == token)
    assert first(p, 1) > first(p, 2)  # the model prefers 1 first ...
    assert first(pi, 2) > 0.6  # ... pi_4 prefers 2, whose continuations are peaked
    assert max(pi.values()) < 0.4  # and spreads over several completions


@pytest.mark.slow
@pytest.mark.parametrize("tau", [1.0 / ALPHA, 1.0], ids=["tau=1/alpha", "tau=1"])
@pytest.mark.parametrize("cut_name", list(CUTS))
def test_every_cut_keeps_pi_alpha_on_the_held_out_model(cut_name, tau):
    def run(seed):
        draws, pi, acceptance = chains_from_exact(PROBLEM, ALPHA, step(cut_name, tau), seed=seed, tau=tau)
        assert acceptance > 0.05
        return Comparison(draws, pi)

    assert_exact_at_every_seed(run, f"{cut_name} tau={tau}")


@pytest.mark.slow
@pytest.mark.parametrize("cut_name", list(CUTS))
def test_the_kernel_without_cut_ratio_is_rejected_on_the_held_out_model(cut_name):
    def run(seed):
        draws, pi, _ = chains_from_exact(PROBLEM, ALPHA, step(cut_name, 1.0 / ALPHA, True), num_steps=30, seed=seed)
        return Comparison(draws, pi)

    assert_rejected_at_every_seed(run, cut_name)


@pytest.mark.parametrize("cut_name", list(CUTS))
def test_no_cut_distribution_puts_almost_every_cut_at_the_start(cut_name):
    """A dropped cut ratio is invisible where a cut family cuts at t=0 almost always (the ratio is
    then 1): on this model each family keeps at least a fifth of its mass after the first token."""
    completions, _ = exact_draws(PROBLEM, ALPHA, 2000, seed=0)
    seqs = generation.new_sequences([PROBLEM.prompt] * 2000, PROBLEM.max_new_tokens)
    state = lockstep.init_from_completions(PROBLEM.lm, seqs, completions, 1.0 / ALPHA)
    at_start = np.exp(np.asarray(lockstep.cut_log_probs(CUTS[cut_name], state.seqs))[:, 0]).mean()
    assert at_start < 0.8, at_start
