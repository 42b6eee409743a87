"""Scalable power sampling (arXiv 2601.21590; "TMC" in the ECMH paper), as pure functions.

The power distribution factorizes token by token (the paper's Theorem 3.1):

    pi_alpha(x_t | prefix)  proportional to  p(x_t | prefix)^alpha * zeta(x_t),
    zeta(x_t) = sum over futures f of p(f | prefix, x_t)^alpha.

Each step takes the `num_candidates` likeliest next tokens, estimates each candidate's zeta from
`num_rollouts` look-ahead rollouts of at most `horizon` tokens drawn from the proposal q
(temperature tau), as the importance average of p(f)^alpha / q(f), and samples the next token from
the candidates' normalized p^alpha * zeta. The ratio is biased for few rollouts (O(1/M)); the
jackknife (M * full - (M - 1) * mean of leave-one-out estimates, clipped at zero and renormalized)
removes the leading term. With horizon 0 every zeta is 1 and a step is low-temperature sampling
(tau = 1/alpha) restricted to the candidates; with one rollout there is no jackknife.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppl_ecmh.lm.generation import Generated, Sequences, ends_with_eos, extend, is_eos, span_sum, token_statistics


def candidate_log_probs(log_p: jax.Array, log_zeta: jax.Array, alpha, jackknife: bool = True) -> jax.Array:
    """log pi_hat over the candidates [..., K] from their log p [..., K] and per-rollout log
    importance weights of their futures [..., K, M]."""
    rollouts = log_zeta.shape[-1]

    def normalized(log_zeta_mean):
        return jax.nn.log_softmax(alpha * log_p + log_zeta_mean, axis=-1)

    full = normalized(jax.nn.logsumexp(log_zeta, axis=-1) - jnp.log(rollouts))
    if not jackknife or rollouts == 1:
        return full
    # leave rollout j out: the mean of the other M - 1 importance weights, for every j at once
    others = jnp.stack([jnp.delete(log_zeta, j, axis=-1, assume_unique_indices=True) for j in range(rollouts)], -1)
    leave_one_out = jax.vmap(normalized, in_axes=-1, out_axes=-1)(jax.nn.logsumexp(others, axis=-2) - jnp.log(rollouts - 1))
    corrected = rollouts * jnp.exp(full) - (rollouts - 1) * jnp.mean(jnp.exp(leave_one_out), axis=-1)
    corrected = jnp.maximum(corrected, 0.0)
    total = jnp.sum(corrected, axis=-1, keepdims=True)
    return jnp.where(total > 0, jnp.log(corrected) - jnp.log(jnp.where(total > 0, total, 1.0)), full)


class TMCInfo(NamedTuple):
    num_generated: jax.Array  # [B] tokens decoded, look-ahead rollouts included


def tmc_sample(keys, state: Generated, lm, *, alpha, tau, limit, num_candidates: int, num_rollouts: int,
               horizon: int, jackknife: bool = True) -> tuple[Generated, TMCInfo]:
    """Generate every row's completion from its prompt (`state` from `prefill`, empty completions)
    token by token until EOS or `limit`, with a key per row [B] (a row's completion depends on its
    key alone). The recorded log q of a token is the log probability with which it was actually
    chosen."""
    seqs = state.seqs
    rows = seqs.length.shape[0]
    fan_out = num_candidates * num_rollouts
    row_index = jnp.arange(rows)

    def body(carry):
        keys, seqs, cache, generated = carry
        triples = jax.vmap(lambda key: jax.random.split(key, 3))(keys)
        keys, rollout_keys, choice_keys = triples[:, 0], triples[:, 1], triples[:, 2]
        running = ~ends_with_eos(lm, seqs) & (seqs.length < limit)
        last = seqs.prompt_length + seqs.length - 1  # the last prompt token when nothing is generated yet
        logits, cache = lm.forward(cache, seqs.tokens[row_index, last][:, None], last[:, None])
        logits = logits[:, 0]
        log_p = jax.nn.log_softmax(logits, axis=-1)
        top_log_p, candidates = jax.lax.top_k(log_p, num_candidates)  # [B, K]

        # rollouts: every (row, candidate, rollout) continues prefix + candidate for up to `horizon` tokens
        repeat = lambda leaf: jnp.repeat(leaf, fan_out, axis=0)
        futures = jax.tree.map(repeat, seqs)
        candidate = jnp.repeat(candidates, num_rollouts, axis=1).reshape(-1)
        futures = futures._replace(
            tokens=futures.tokens.at[jnp.arange(rows * fan_out), repeat(last) + 1].set(candidate),
            length=futures.length + 1)
        done = is_eos(lm, candidate) | (futures.length >= repeat(limit)) | ~repeat(running)
        stop = jnp.where(done, futures.length, jnp.minimum(futures.length + horizon, repeat(limit)))
        future_keys = jax.vmap(lambda key: jax.random.split(key, fan_out))(rollout_keys)
        future_keys = future_keys.reshape((rows * fan_out,) + future_keys.shape[2:])
        futures, _ = extend(lm, future_keys, futures, jax.tree.map(repeat, cache), futures.length, stop, tau)
        log_zeta = (alpha * span_sum(futures.logp, repeat(seqs.length) + 1, futures.length)
                    - span_sum(futures.logq, repeat(seqs.length) + 1, futures.length))
        log_zeta = log_zeta.reshape(rows, num_candidates, num_rollouts)
        log_pi = candidate_log_probs(top_log_p, log_zeta, alpha, jackknife)
        pick = jax.vmap(jax.random.categorical)(choice_keys, log_pi)
        token = jnp.take_along_axis(candidates, pick[:, None], axis=1)[:, 0]
        stats = token_statistics(logits, token, tau)

        index = jnp.where(running, seqs.length, seqs.max_new_tokens)  # out of range: dropped
        position = jnp.where(running, seqs.prompt_length + seqs.length, seqs.tokens.shape[1])
        chosen_log_q = jnp.take_along_axis(log_pi, pick[:, None], axis=1)[:, 0]
        seqs = Sequences(
            tokens=seqs.tokens.at[row_index, position].set(token, mode="drop"),
            prompt_length=seqs.prompt_length,
            length=seqs.length + running,
            logp=seqs.logp.at[row_index, index].set(stats.logp, mode="drop"),
            logq=seqs.logq.at[row_index, index].set(chosen_log_q, mode="drop"),
            entropy=seqs.entropy.at[row_index, index].set(stats.entropy, mode="drop"),
        )
        rollout_tokens = (futures.length - repeat(seqs.length)).reshape(rows, fan_out).sum(axis=1)
        generated = generated + jnp.where(running, 1 + rollout_tokens, 0)
        return keys, seqs, cache, generated

    def unfinished(carry):
        seqs = carry[1]
        return jnp.any(~ends_with_eos(lm, seqs) & (seqs.length < limit))

    _, seqs, cache, generated = jax.lax.while_loop(unfinished, body, (keys, seqs, state.cache,
                                                                      jnp.zeros(rows, jnp.int32)))
    return Generated(seqs, cache), TMCInfo(generated)
