"""The token draw every sampler makes: its law is softmax(logits), whatever the vocabulary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_ecmh.lm.generation import SAMPLING_BLOCK, sample_tokens
from tests.exact import _chi_square_pvalue

VOCAB = 2 * SAMPLING_BLOCK + 188  # three blocks, the last one partial
DRAWS = 60_000


def logits() -> jax.Array:
    """Uneven logits with a truncated tail (-inf), as top-k leaves them."""
    values = 2.0 * jax.random.normal(jax.random.key(0), (VOCAB,))
    return values.at[VOCAB - 40 :].set(-jnp.inf)


def goodness_of_fit(seed: int) -> float:
    """The chi-square p-value of DRAWS draws against softmax(logits)."""
    keys = jax.random.split(jax.random.key(seed), DRAWS)
    tokens = np.asarray(jax.jit(jax.vmap(sample_tokens, in_axes=(0, None)))(keys, logits()))
    assert tokens.min() >= 0 and tokens.max() < VOCAB
    observed = np.bincount(tokens, minlength=VOCAB)
    values = np.asarray(logits(), np.float64)  # the law in float64, summing to DRAWS exactly enough for scipy
    weights = np.exp(values - values.max())
    return _chi_square_pvalue(observed, weights / weights.sum() * DRAWS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_level_draws_follow_the_softmax(seed):
    assert goodness_of_fit(seed) > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_masses_taken_as_the_largest_logit_are_rejected(seed, monkeypatch):
    """The test can fail: a draw that weighs blocks by their largest logit instead of their mass
    (the partial block is then over-drawn) is rejected at every seed."""
    monkeypatch.setattr(jax.nn, "logsumexp", lambda x, axis: jnp.max(x, axis=axis))
    assert goodness_of_fit(seed) < 1e-6


def test_a_vocabulary_of_one_block_draws_as_jax_does():
    small = jax.random.normal(jax.random.key(1), (8, SAMPLING_BLOCK))
    key = jax.random.key(2)
    np.testing.assert_array_equal(sample_tokens(key, small), jax.random.categorical(key, small))
