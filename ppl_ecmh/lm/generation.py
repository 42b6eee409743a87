"""Batched generation with per-token bookkeeping: the one loop every sampler draws tokens with.

`Sequences` holds a batch of prompts with their completions and, per completion token, the three
numbers the Metropolis-Hastings ratio is built from: log p under the base model, log q under the
proposal (temperature tau) and the base model's next-token entropy. `extend` truncates each row to
a kept prefix and regenerates from there in a `lax.while_loop` (on an accelerator, one per
attention span: `ppl_ecmh.lm.spans`), one token per row per iteration, each row stopping at EOS or
its own length limit. Ancestral sampling, a suffix proposal and a block extension are all calls of
`extend` with different `keep` and `limit`.

Layout: prompts are right-padded; row b's prompt fills positions [0, P_b) of `tokens` and its
completion positions [P_b, P_b + n_b). Per-token arrays are indexed by completion index i = 0..T-1.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppl_ecmh.lm import spans


class Sequences(NamedTuple):
    tokens: jax.Array  # [B, S] int32, prompt then completion; S = longest prompt + T
    prompt_length: jax.Array  # [B] int32, P_b >= 1
    length: jax.Array  # [B] int32, completion length n_b
    logp: jax.Array  # [B, T] float32, log p(x_i | c, x_<i)
    logq: jax.Array  # [B, T] float32, log q(x_i | c, x_<i), the proposal at temperature tau
    entropy: jax.Array  # [B, T] float32, entropy of p(. | c, x_<i)

    @property
    def max_new_tokens(self) -> int:
        return self.logp.shape[-1]


class Generated(NamedTuple):
    """Sequences with the model's cache of their tokens (KV cache, batch first)."""

    seqs: Sequences
    cache: Any


class TokenStatistics(NamedTuple):
    logp: jax.Array
    logq: jax.Array
    entropy: jax.Array


def token_statistics(logits: jax.Array, token: jax.Array, tau) -> TokenStatistics:
    """log p and log q (temperature tau) of `token`, and the entropy of p, from base logits [..., V]."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    log_q = jax.nn.log_softmax(logits / tau, axis=-1)
    pick = lambda table: jnp.take_along_axis(table, token[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(log_p) * jnp.where(jnp.isfinite(log_p), log_p, 0.0), axis=-1)
    return TokenStatistics(pick(log_p), pick(log_q), entropy)


SAMPLING_BLOCK = 256  # words per block of the two-level draw


def sample_tokens(key, logits: jax.Array) -> jax.Array:
    """Draws from softmax(logits) [..., V] (one per leading index): a block of SAMPLING_BLOCK
    consecutive words by its mass (logsumexp), then a word of that block by its logit. The law is
    softmax(logits) exactly, since p(word) = p(block) p(word | block), and the Gumbel-max trick
    needs V / 256 + 256 noise draws a row instead of V: the noise of a 152k-word vocabulary cost
    about 8% of a float32 decode step on a CPU. Vocabularies of at most one block take a
    single draw (the toy models' draws are those of `jax.random.categorical`)."""
    *batch, vocab = logits.shape
    if vocab <= SAMPLING_BLOCK:
        return jax.random.categorical(key, logits).astype(jnp.int32)
    blocks = -(-vocab // SAMPLING_BLOCK)
    padding = [(0, 0)] * len(batch) + [(0, blocks * SAMPLING_BLOCK - vocab)]
    grouped = jnp.pad(logits, padding, constant_values=-jnp.inf).reshape(*batch, blocks, SAMPLING_BLOCK)
    block_key, word_key = jax.random.split(key)
    block = jax.random.categorical(block_key, jax.nn.logsumexp(grouped, axis=-1))
    within = jnp.take_along_axis(grouped, block[..., None, None], axis=-2)[..., 0, :]
    return (block * SAMPLING_BLOCK + jax.random.categorical(word_key, within)).astype(jnp.int32)


def per_row(key) -> bool:
    """Whether `key` is a key per row ([B] typed keys, or [B, 2] raw ones) rather than one key."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    return jnp.ndim(key) == (1 if typed else 2)


def split_and_sample(key, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(the next key, tokens drawn from softmax(logits) [B, V]). With a key per row, each row's
    draw depends on its own key only, so it is the same whatever rows stand beside it."""
    if per_row(key):
        pairs = jax.vmap(jax.random.split)(key)
        return pairs[:, 0], jax.vmap(sample_tokens)(pairs[:, 1], logits)
    key, draw_key = jax.random.split(key)
    return key, sample_tokens(draw_key, logits)


def new_sequences(prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int = 0,
                  prompt_block: int | None = None) -> Sequences:
    """Right-padded prompts with empty completions (host-side; call once per run). The prompt
    block is as wide as the longest prompt, or `prompt_block` when given: fixing it keeps array
    shapes, and so the compiled programs, the same across batches of different prompts."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompt: every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if prompt_block is not None:
        if prompt_block < longest:
            raise ValueError(f"prompt_block: {prompt_block} is shorter than the longest prompt ({longest} tokens)")
        longest = prompt_block
    tokens = np.full((len(prompts), longest + max_new_tokens), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt
    zeros = jnp.zeros((len(prompts), max_new_tokens), jnp.float32)
    return Sequences(
        jnp.asarray(tokens),
        jnp.asarray([len(p) for p in prompts], jnp.int32),
        jnp.zeros(len(prompts), jnp.int32),
        zeros,
        zeros,
        zeros,
    )


def prefill(lm, seqs: Sequences) -> Any:
    """A cache holding every prompt (one parallel forward over the padded prompt block)."""
    batch, total = seqs.tokens.shape
    prompt_block = total - seqs.max_new_tokens
    cache = lm.init_cache(batch, total)
    positions = jnp.broadcast_to(jnp.arange(prompt_block, dtype=jnp.int32), (batch, prompt_block))
    _, cache = lm.forward(cache, seqs.tokens[:, :prompt_block], positions)
    return cache


def is_eos(lm, token: jax.Array) -> jax.Array:
    return jnp.isin(token, jnp.asarray(lm.eos_token_ids, jnp.int32))


def ends_with_eos(lm, seqs: Sequences) -> jax.Array:
    """[B] whether each row's completion is non-empty and its last token is an EOS."""
    last = jnp.take_along_axis(seqs.tokens, (seqs.prompt_length + seqs.length - 1)[:, None], axis=1)[:, 0]
    return (seqs.length > 0) & is_eos(lm, last)


class _Loop(NamedTuple):
    key: jax.Array
    seqs: Sequences
    cache: Any
    done: jax.Array


def extend(lm, key, seqs: Sequences, cache, keep: jax.Array, limit: jax.Array, tau,
           static_attention: bool | None = None) -> tuple[Sequences, Any]:
    """Keep the first `keep[b]` completion tokens of each row and sample new ones from the proposal
    softmax(logits / tau) until EOS or `limit[b]` completion tokens. Rows with keep >= limit are
    left as they are (truncated to `keep`). `key` is one key, or a key per row (`per_row`).

    Requires the cache to hold every position before P_b + keep_b - 1 (true after `prefill`, after
    any `extend`, and for any keep up to the current length).

    `static_attention` (None: `spans.static_attention_by_default()`, on any backend but the CPU):
    one loop per attention span, each until a live row would feed a position past it, so that no
    loop inside a decode step waits on the host (`ppl_ecmh.lm.spans`). The same tokens and
    statistics, bit for bit on a CPU.
    """
    rows = jnp.arange(seqs.tokens.shape[0])
    seqs = seqs._replace(length=keep.astype(jnp.int32))

    def feeding(s: Sequences) -> jax.Array:
        return s.prompt_length + s.length - 1  # position of each row's last token, fed next

    def body(lm, loop: _Loop) -> _Loop:
        s = loop.seqs
        last = feeding(s)
        logits, cache = lm.forward(loop.cache, s.tokens[rows, last][:, None], last[:, None])
        logits = logits[:, 0]
        key, token = split_and_sample(loop.key, logits / tau)
        stats = token_statistics(logits, token, tau)
        write = ~loop.done
        index = jnp.where(write, s.length, s.max_new_tokens)  # out of range: dropped
        position = jnp.where(write, last + 1, s.tokens.shape[1])
        s = s._replace(
            tokens=s.tokens.at[rows, position].set(token, mode="drop"),
            length=s.length + write,
            logp=s.logp.at[rows, index].set(stats.logp, mode="drop"),
            logq=s.logq.at[rows, index].set(stats.logq, mode="drop"),
            entropy=s.entropy.at[rows, index].set(stats.entropy, mode="drop"),
        )
        done = loop.done | is_eos(lm, token) | (s.length >= limit)
        return _Loop(key, s, cache, done)

    def running(span: int | None, loop: _Loop) -> jax.Array:
        going = ~jnp.all(loop.done)
        if span is not None:  # rows done feed too, but nothing they compute is kept
            going &= jnp.max(jnp.where(loop.done, 0, feeding(loop.seqs))) < span
        return going

    loop = _Loop(key, seqs, cache, keep >= limit)
    for span in spans.decode_spans(seqs.tokens.shape[1], static_attention):
        spanned = lm if span is None else lm.within(span)
        loop = jax.lax.while_loop(functools.partial(running, span), functools.partial(body, spanned), loop)
    return loop.seqs, loop.cache


def mean_log_likelihood(seqs: Sequences) -> jax.Array:
    """Average log p per completion token (best-of-N's selection score)."""
    return sequence_log_prob(seqs) / jnp.maximum(seqs.length, 1)


def within_completion(seqs: Sequences) -> jax.Array:
    """[B, T] mask of the completion indices each row actually has (i < n_b)."""
    return jnp.arange(seqs.max_new_tokens)[None, :] < seqs.length[:, None]


# Pads an unfinished completion: one that stopped at a length cap below max_new_tokens without EOS
# (a block-wise stage draw). Padding it with EOS would make it read as a finished completion, one
# token longer, and score it as such; UNFINISHED ends it where it stopped.
UNFINISHED = -1


def completion_tokens(seqs: Sequences, pad_id: int, lm=None) -> jax.Array:
    """Completions as [B, T] arrays, padded as `padded_completions` pads them."""
    positions = seqs.prompt_length[:, None] + jnp.arange(seqs.max_new_tokens)[None, :]
    return padded_completions(jnp.take_along_axis(seqs.tokens, positions, axis=1, mode="clip"), seqs.length, pad_id, lm)


def padded_completions(tokens: jax.Array, length: jax.Array, pad_id: int, lm=None) -> jax.Array:
    """Completions [..., T] padded with `pad_id` after each one's `length`; given `lm`, unfinished
    ones (no EOS, shorter than T) are padded with UNFINISHED instead."""
    total = tokens.shape[-1]
    pad = jnp.full(length.shape, pad_id, jnp.int32)
    if lm is not None:
        last = jnp.take_along_axis(tokens, jnp.maximum(length - 1, 0)[..., None], axis=-1)[..., 0]
        unfinished = (length > 0) & (length < total) & ~is_eos(lm, last)
        pad = jnp.where(unfinished, UNFINISHED, pad)
    return jnp.where(jnp.arange(total) < length[..., None], tokens, pad[..., None])


def completion_length(lm, completions: jax.Array) -> jax.Array:
    """Length of [B, T] completions: through the first EOS, else up to the first UNFINISHED, else T."""
    eos = is_eos(lm, completions)
    unfinished = completions == UNFINISHED
    ends = jnp.where(jnp.any(unfinished, axis=-1), jnp.argmax(unfinished, axis=-1), completions.shape[-1])
    return jnp.where(jnp.any(eos, axis=-1), jnp.minimum(jnp.argmax(eos, axis=-1) + 1, ends), ends).astype(jnp.int32)


# Logits teacher forcing holds at once (rows x positions x vocabulary of one chunk): 2**27 floats
# are 0.5 GB. All positions at once would be 64 rows x 330 positions x 151,936 words = 12.8 GB for
# qwen2.5, and more again for the log-softmax temporaries.
LOGITS_BUDGET = 2**27


def teacher_force(lm, seqs: Sequences, completions: jax.Array, tau) -> tuple[Sequences, Any]:
    """Sequences and cache for given completions [B, T] (each ends at its first EOS). The prompt
    block is prefilled in one pass; the completions are then fed in chunks of positions, as few
    as fit `LOGITS_BUDGET`, each scoring the tokens it predicts. Used to start chains from chosen
    draws and to check the fast path."""
    batch, total = seqs.tokens.shape
    steps = seqs.max_new_tokens
    length = completion_length(lm, completions)
    completions = jnp.maximum(completions, 0)  # UNFINISHED padding as token 0: past the length, never read
    rows = jnp.arange(batch)[:, None]
    tokens = seqs.tokens.at[rows, seqs.prompt_length[:, None] + jnp.arange(steps)[None, :]].set(completions, mode="drop")
    cache = prefill(lm, seqs._replace(tokens=tokens))
    # position P_b - 1 + i feeds the token before completion token i and predicts it; i = T feeds
    # the last completion token, so that the cache holds every token, as a full forward pass would
    chunk = int(max(1, min(steps + 1, LOGITS_BUDGET // (batch * lm.vocab_size))))
    chunks = -(-(steps + 1) // chunk)
    targets = jnp.pad(completions, ((0, 0), (0, chunks * chunk - steps)))

    def feed(cache, start):
        index = start + jnp.arange(chunk)[None, :]
        positions = seqs.prompt_length[:, None] - 1 + index
        fed = jnp.take_along_axis(tokens, jnp.minimum(positions, total - 1), axis=1)
        logits, cache = lm.forward(cache, fed, jnp.where(positions < total, positions, total))  # past the end: dropped
        predicted = jax.lax.dynamic_slice_in_dim(targets, start, chunk, axis=1)
        return cache, token_statistics(logits, predicted, tau)

    cache, stats = jax.lax.scan(feed, cache, jnp.arange(chunks) * chunk)
    per_token = lambda values: values.transpose(1, 0, 2).reshape(batch, chunks * chunk)[:, :steps]  # [B, T]
    seqs = Sequences(tokens, seqs.prompt_length, length, *(per_token(values) for values in stats))
    valid = within_completion(seqs)
    mask = lambda x: jnp.where(valid, x, 0.0)
    return seqs._replace(logp=mask(seqs.logp), logq=mask(seqs.logq), entropy=mask(seqs.entropy)), cache


def span_sum(values: jax.Array, start: jax.Array, stop: jax.Array) -> jax.Array:
    """Per row, the sum of values[b, t] over start[b] <= t < stop[b] ([B, T] -> [B])."""
    index = jnp.arange(values.shape[-1])[None, :]
    inside = (index >= start[:, None]) & (index < stop[:, None])
    return jnp.sum(jnp.where(inside, values, 0.0), axis=-1)


def sequence_log_prob(seqs: Sequences) -> jax.Array:
    """log p(x | c) of each row's completion: the sum of its per-token log-probs."""
    return jnp.sum(jnp.where(within_completion(seqs), seqs.logp, 0.0), axis=-1)
