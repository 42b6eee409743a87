"""The decoder forward pass in JAX: one function for prefill and decode, over an explicit KV cache.

The cache is indexed by absolute position: slot j of a row holds the keys and values of that row's
token at position j. A forward call writes the slots of the tokens it is given and attends to slots
<= each query's position. So prompts of different lengths are right-padded (junk beyond a row's
prompt is overwritten before any query can see it), every row decodes at its own position, and a
row restarts from any earlier position t simply by feeding position t again: the slots before t are
still valid and the ones after are masked. This is exactly what suffix resampling needs.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppl_ecmh.lm.config import ModelConfig
from ppl_ecmh.lm.rope import rope_tables, run_scaling

ATTENTION_CHUNK = 128  # cache slots per step of the attention loop


class KVCache(NamedTuple):
    """Keys and values, one [batch, kv_head, slot, head_dim] array per layer.

    One buffer per layer (not a stacked array) so a decode step updates each in place without
    slicing a layer out; batch first like every state array; slot next to head_dim so attention
    reads the cache without transposing it.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def init_cache(config: ModelConfig, batch_size: int, length: int, dtype) -> KVCache:
    shape = (batch_size, config.num_kv_heads, length, config.head_dim)
    layers = range(config.num_layers)
    return KVCache(tuple(jnp.zeros(shape, dtype) for _ in layers), tuple(jnp.zeros(shape, dtype) for _ in layers))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight.astype(jnp.float32)).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array, attention_factor: jax.Array) -> jax.Array:
    """Rotary embedding in the half-split layout of Hugging Face checkpoints, over the first
    2 * len(inv_freq) dims of each head (the rest pass through), cos and sin scaled by
    `attention_factor` (YaRN, LongRoPE). x: [B, T, heads, hd]."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, rotary/2]
    cos = (jnp.cos(angles) * attention_factor)[:, :, None, :]
    sin = (jnp.sin(angles) * attention_factor)[:, :, None, :]
    half = inv_freq.shape[-1]
    x32 = x.astype(jnp.float32)
    x1, x2, passed = x32[..., :half], x32[..., half : 2 * half], x32[..., 2 * half :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, passed], axis=-1)
    return rotated.astype(x.dtype)


def linear(x: jax.Array, weight: jax.Array) -> jax.Array:
    """x @ weight.T for a weight in the checkpoints' [out, in] layout (faster on CPU than [in, out])."""
    return jnp.einsum("...i,oi->...o", x, weight)


def _write_rows(cache: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
    """Write new [B, T, kvh, hd] into a layer's cache [B, kvh, S, hd] at slots positions [B, T].

    A single scatter, which XLA applies in place (a vmapped dynamic_update_slice copied the layer).
    """
    rows = jnp.arange(cache.shape[0])[:, None]
    return cache.at[rows, :, positions].set(new.astype(cache.dtype), mode="drop")


def _attention(config, layer_params, x, positions, keys, values, rope, span):
    """Self-attention of x [B, T, D] over a layer's cache; returns (output, keys, values)."""
    batch, steps, _ = x.shape
    q = linear(x, layer_params["wq"])
    k = linear(x, layer_params["wk"])
    v = linear(x, layer_params["wv"])
    if config.attention_bias:
        q, k, v = q + layer_params["bq"], k + layer_params["bk"], v + layer_params["bv"]
    q = q.reshape(batch, steps, config.num_heads, config.head_dim)
    k = k.reshape(batch, steps, config.num_kv_heads, config.head_dim)
    v = v.reshape(batch, steps, config.num_kv_heads, config.head_dim)
    if config.qk_norm:
        q = rms_norm(q, layer_params["q_norm"], config.rms_norm_eps)
        k = rms_norm(k, layer_params["k_norm"], config.rms_norm_eps)
    q, k = apply_rope(q, positions, *rope), apply_rope(k, positions, *rope)

    keys = _write_rows(keys, k, positions)  # [B, kvh, S, hd]
    values = _write_rows(values, v, positions)

    group = config.num_heads // config.num_kv_heads
    q = q.reshape(batch, steps, config.num_kv_heads, group, config.head_dim)
    out = _attend_live(q, keys, values, positions, span)
    out = out.reshape(batch, steps, config.num_heads * config.head_dim)
    return linear(out, layer_params["wo"]), keys, values


def _attend_live(q, keys, values, positions, span: int | None = None):
    """Softmax attention of queries q [B, T, kvh, g, hd] at `positions` [B, T] over the cached
    slots at or before each position, reading the cache only up to the furthest position: a loop
    over key/value chunks with an online softmax. A decode step then costs what the live tokens
    cost, not what the cache holds. With a `span` (positions all below it), the loop reads the
    chunks below the span instead: the same output, in a loop whose trip count is known when it
    is compiled.

    A chunk that lies wholly past a row's position changes nothing for that row, exactly (its
    correction factor is 1 and its terms 0), so a row's output does not depend on how far the
    other rows of the batch reach. Positions >= S (idle rows) do not extend the loop. A cache of
    at most one chunk takes plain softmax attention, with no loop."""
    size = keys.shape[2]
    scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    if size <= ATTENTION_CHUNK:  # one chunk: plain softmax attention, no loop
        scores = jnp.einsum("btkgd,bksd->bkgts", q, keys, preferred_element_type=jnp.float32) * scale
        visible = jnp.arange(size)[None, None, :] <= positions[:, :, None]  # [B, T, S]
        weights = jax.nn.softmax(jnp.where(visible[:, None, None], scores, -jnp.inf), axis=-1)
        out = jnp.einsum("bkgts,bksd->bkgtd", weights.astype(values.dtype), values, preferred_element_type=jnp.float32)
        return out.transpose(0, 3, 1, 2, 4).astype(values.dtype)
    chunk = ATTENTION_CHUNK
    live = jnp.where(positions < size, positions, 0)
    num_chunks = jnp.max(live) // chunk + 1 if span is None else -(-min(span, size) // chunk)
    batch, steps, kv_heads, group, _ = q.shape
    shape = (batch, kv_heads, group, steps)

    def body(carry):
        index, peak, total, accumulated = carry
        first = index * chunk
        start = jnp.minimum(first, size - chunk)  # the last chunk may overlap the one before
        k = jax.lax.dynamic_slice_in_dim(keys, start, chunk, axis=2)
        v = jax.lax.dynamic_slice_in_dim(values, start, chunk, axis=2)
        scores = jnp.einsum("btkgd,bkcd->bkgtc", q, k, preferred_element_type=jnp.float32) * scale
        slots = start + jnp.arange(chunk)
        visible = (slots[None, None, :] >= first) & (slots[None, None, :] <= positions[:, :, None])  # [B, T, C]
        scores = jnp.where(visible[:, None, None], scores, -jnp.inf)
        new_peak = jnp.maximum(peak, jnp.max(scores, axis=-1))
        shift = jnp.where(jnp.isfinite(new_peak), new_peak, 0.0)
        weights = jnp.exp(scores - shift[..., None])
        correction = jnp.exp(peak - shift)
        total = total * correction + jnp.sum(weights, axis=-1)
        update = jnp.einsum("bkgtc,bkcd->bkgtd", weights.astype(values.dtype), v, preferred_element_type=jnp.float32)
        return index + 1, new_peak, total, accumulated * correction[..., None] + update

    # A while loop, the same program in and out of jit. Compiled on its own, outside jit, after
    # about 140 tests of the suite, this loop (and fori_loop's scan before it) crashed XLA's CPU
    # compiler; one-chunk caches skip it and log_prob scores under jit, which avoided the crash.
    start = (jnp.int32(0), jnp.full(shape, -jnp.inf), jnp.zeros(shape), jnp.zeros(shape + (values.shape[-1],)))
    _, _, total, accumulated = jax.lax.while_loop(lambda carry: carry[0] < num_chunks, body, start)
    out = accumulated / jnp.where(total > 0, total, 1.0)[..., None]  # [B, kvh, g, T, hd]
    return out.transpose(0, 3, 1, 2, 4).astype(values.dtype)


def _mlp(layer_params, x):
    gated = jax.nn.silu(linear(x, layer_params["w_gate"])) * linear(x, layer_params["w_up"])
    return linear(gated, layer_params["w_down"])


def forward(params: dict, config: ModelConfig, cache: KVCache, tokens: jax.Array, positions: jax.Array,
            span: int | None = None):
    """Logits [B, T, V] (float32) for tokens [B, T] at positions [B, T].

    Writes the tokens' keys/values into the cache and returns it; attends to every cached slot at or
    before each token's position. `span`: see `Transformer.attention_span`.
    """
    x = params["embed"][tokens]
    rope = (params["inv_freq"], params["rope_attention_factor"])
    keys, values = list(cache.k), list(cache.v)
    for layer, layer_params in enumerate(params["layers"]):  # unrolled: no per-step weight slicing
        h = rms_norm(x, layer_params["attn_norm"], config.rms_norm_eps)
        attended, keys[layer], values[layer] = _attention(
            config, layer_params, h, positions, keys[layer], values[layer], rope, span
        )
        x = x + attended
        x = x + _mlp(layer_params, rms_norm(x, layer_params["mlp_norm"], config.rms_norm_eps))
    cache = KVCache(tuple(keys), tuple(values))
    x = rms_norm(x, params["final_norm"], config.rms_norm_eps)
    head = params["embed"] if config.tie_word_embeddings else params["lm_head"]
    logits = jnp.einsum("btd,vd->btv", x, head, preferred_element_type=jnp.float32)
    return logits, cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Transformer:
    """A decoder with its weights: a pytree (weights are leaves, the config is static).

    Implements the language-model interface the samplers use (see `ppl_ecmh.lm.interface`).
    """

    params: dict
    config: ModelConfig = dataclasses.field(metadata=dict(static=True))
    # Attend below this cache position only, in loops of a trip count fixed when compiled; None: up
    # to each step's furthest position, a trip count the device computes. XLA:GPU waits on the host
    # at every trip of a loop whose count it does not know, so an accelerator's engine sets a span
    # (`ppl_ecmh.engine`), while a CPU has nothing to wait for and compiles one program, not one
    # per span. Every position fed must be below it.
    attention_span: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    # The positions a run may use, when a run chose them (`for_context`); None: the checkpoint's
    # limit, with the RoPE tables the checkpoint's limit implies.
    context_length: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.config.eos_token_ids

    @property
    def max_length(self) -> int:
        return self.context_length or self.config.max_position_embeddings

    @property
    def rope_scaling(self) -> dict | None:
        """The RoPE scaling in use: the checkpoint's (for LongRoPE, with the factor set this
        decoder's length chose), or YaRN stretched to `context_length`; None for plain RoPE."""
        chosen = run_scaling(self.config, self.context_length, stretch=True) if self.context_length else None
        scaling = dict(chosen or self.config.rope_scaling or {})
        if scaling.get("rope_type") == "longrope":
            long = self.max_length > scaling["original_max_position_embeddings"]
            scaling["factors_in_use"] = "long_factor" if long else "short_factor"
        return scaling or None

    @property
    def dtype(self):
        return self.params["embed"].dtype

    def init_cache(self, batch_size: int, length: int) -> KVCache:
        return init_cache(self.config, batch_size, length, self.dtype)

    def forward(self, cache: KVCache, tokens: jax.Array, positions: jax.Array):
        return forward(self.params, self.config, cache, tokens, positions, self.attention_span)

    def within(self, span: int | None) -> "Transformer":
        return dataclasses.replace(self, attention_span=span)

    def for_context(self, length: int, stretch: bool = False) -> "Transformer":
        """This decoder for runs of at most `length` positions: the RoPE tables such a run uses
        (LongRoPE's short or long factors; with `stretch`, YaRN past an unscaled model's limit;
        `ppl_ecmh.lm.rope`). Raises PromptTooLongError when the model does not reach `length`."""
        scaling = run_scaling(self.config, length, stretch)
        return dataclasses.replace(self, params=dict(self.params, **rope_params(self.config, length, scaling)),
                                   context_length=length)


def rope_params(config: ModelConfig, length: int | None = None, scaling: tuple | None = None) -> dict:
    """The decoder's RoPE entries of `params`: for the checkpoint's own limit and scaling, or for
    runs of at most `length` positions under `scaling` (`run_scaling`)."""
    scaling = config.rope_scaling if length is None else scaling
    tables = rope_tables(config, scaling, length or config.max_position_embeddings)
    return dict(inv_freq=jnp.asarray(tables.inv_freq), rope_attention_factor=jnp.float32(tables.attention_factor))
