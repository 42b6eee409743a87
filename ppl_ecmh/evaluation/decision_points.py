"""Suffix MH on a decision-point model (`ppl_ecmh.lm.decision_points`), exactly: the transition
matrix of the decision tuple, and what it implies for mixing per decoded token.

With the proposal at tau = 1/alpha, p(x_t)^alpha = q(x_t) Z_t, where Z_t is the mass p^alpha
leaves at position t, so the target-to-proposal part of the MH ratio (`ppl_ecmh.samplers.mh`) for a
cut at c is prod_{t >= c} Z'_t / Z_t: the tokens drawn cancel, and Z_t depends only on the state
(the branch of the last decision before t). The cut distribution reads the entropy profile,
which is a function of the decision tuple B too. The chain on B is therefore itself a Markov
chain, and for a cut c that keeps the first k decisions:

    K(B, B') = sum_c q_cut(c | B) prod_{m >= k} q_tau(b'_m) min(1, Phi_c(B') / Phi_c(B) q_cut(c | B') / q_cut(c | B))

for B' equal to B on the first k decisions, with Phi_c(B) = prod_{t >= c} Z_t(B). Each step decodes
T - c tokens. Everything below is exact: no Monte Carlo error, for any cut distribution the
library has (the cut's own `log_prob` is evaluated), and `tests/test_decision_points.py` holds it
against the engine running the model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl_ecmh.lm.decision_points import DecisionPoints
from ppl_ecmh.lm.generation import token_statistics

CUTS_AT_ONCE = 128  # cut positions whose [S, S] moves are held at once


class Chain(NamedTuple):
    """The exact chain on decision tuples."""

    kernel: np.ndarray  # [S, S] transition matrix
    target: np.ndarray  # [S] pi_alpha of each tuple
    cost: np.ndarray  # [S] expected tokens one step decodes from each tuple
    cut_mass: np.ndarray  # [S, d + 1] probability that a step keeps exactly k decisions (k = 0..d)


def entropy_profiles(model: DecisionPoints) -> np.ndarray:
    """[S, T] the base model's entropy at each completion position, per decision tuple."""
    logits = jnp.asarray(model.logits()[: model.length], jnp.float32)  # [T, b + 1, V + 1]
    entropy = np.asarray(token_statistics(logits, jnp.zeros(logits.shape[:2], jnp.int32), 1.0).entropy)
    return entropy[np.arange(model.length), model.decision_states()]


def decision_log_proposals(model: DecisionPoints, alpha: float) -> np.ndarray:
    """[S, d]: log q_tau (tau = 1/alpha) of each decision of each tuple; their sum over a tuple is
    the log-probability that a fresh completion from the proposal takes it."""
    log_q = alpha * model.logits()[list(model.positions), 0, : model.num_branches]
    log_q = log_q - np.logaddexp.reduce(log_q, axis=-1, keepdims=True)  # [d, b]: q_tau at each decision
    return np.take_along_axis(log_q.T, model.tuples(), axis=0) if len(model.positions) else np.zeros((1, 0))


def exact_chain(model: DecisionPoints, cut, alpha: float, drop_cut_ratio: bool = False) -> Chain:
    """The transition matrix of suffix MH with `cut` at tau = 1/alpha, on decision tuples.
    `drop_cut_ratio` omits the cut correction, a wrong kernel, to show that tests can tell."""
    tuples, states = model.tuples(), model.decision_states()
    size, steps, decisions = len(tuples), model.length, len(model.positions)
    entropy = entropy_profiles(model)
    log_cut = np.asarray(jax.vmap(cut.log_prob, in_axes=(0, None))(jnp.asarray(entropy), jnp.int32(steps)), np.float64)
    log_z = model.log_partition(alpha)[np.arange(steps), states]  # [S, T]
    phi = np.cumsum(log_z[:, ::-1], axis=1)[:, ::-1]  # log Phi_c(B): sum over t >= c
    proposal = decision_log_proposals(model, alpha)  # [S, d]
    proposal_from = np.concatenate([np.cumsum(proposal[:, ::-1], axis=1)[:, ::-1], np.zeros((size, 1))], axis=1)
    kept = np.searchsorted(np.asarray(model.positions), np.arange(steps))  # decisions before cut c
    kernel, cut_mass = np.zeros((size, size)), np.zeros((size, decisions + 1))
    for k in range(decisions + 1):
        same_prefix = (tuples[:, None, :k] == tuples[None, :, :k]).all(-1)  # [S, S']
        cut_mass[:, k] = np.exp(log_cut[:, kept == k]).sum(-1)
        for cuts in np.array_split(np.flatnonzero(kept == k), max(1, (kept == k).sum() // CUTS_AT_ONCE)):
            log_ratio = phi[None, :, cuts] - phi[:, None, cuts]  # [S, S', c]
            if not drop_cut_ratio:  # a cut B' cannot make (-inf) is a move that cannot be undone: rejected
                log_ratio = log_ratio + log_cut[None, :, cuts] - np.where(np.isfinite(log_cut), log_cut, 0.0)[:, None, cuts]
            move = np.exp(log_cut[:, None, cuts] + proposal_from[None, :, k, None] + np.minimum(0.0, log_ratio))
            kernel += np.where(same_prefix, move.sum(-1), 0.0)
    np.fill_diagonal(kernel, 0.0)
    np.fill_diagonal(kernel, 1.0 - kernel.sum(1))
    log_target = phi[:, 0] + proposal_from[:, 0]
    target = np.exp(log_target - np.logaddexp.reduce(log_target))
    cost = (np.exp(log_cut) * (steps - np.arange(steps))).sum(-1)
    return Chain(kernel, target, cost, cut_mass)


def clean_decisions(model: DecisionPoints) -> np.ndarray:
    """[S] the functional the study follows: how many decisions took branch 1."""
    return (model.tuples() == 1).sum(-1).astype(np.float64)


def integrated_autocorrelation_time(chain: Chain, values: np.ndarray) -> float:
    """tau_int = 1 + 2 sum_k rho_k of `values` under the stationary chain, from the fundamental
    matrix Z = (I - K + 1 pi^T)^-1: sum_{k >= 0} K^k g = Z g for g centred under pi."""
    pi = chain.target
    centred = values - pi @ values
    variance = pi @ centred**2
    if variance <= 0:
        return float("nan")
    fundamental = np.linalg.inv(np.eye(len(pi)) - chain.kernel + np.outer(np.ones(len(pi)), pi))
    return float(2 * (pi * centred) @ (fundamental @ centred) / variance - 1)


def ess_per_thousand_tokens(chain: Chain, values: np.ndarray) -> float:
    """Effective draws of `values` per 1,000 decoded tokens at stationarity."""
    return 1000.0 / (integrated_autocorrelation_time(chain, values) * float(chain.target @ chain.cost))


def distance_path(chain: Chain, start: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Total-variation distance to pi_alpha of the chain started at tuple `start`, after each of
    0..steps steps, and the expected tokens decoded by then."""
    law = np.zeros(len(chain.target))
    law[start] = 1.0
    distances, tokens = [0.5 * np.abs(law - chain.target).sum()], [0.0]
    for _ in range(steps):
        tokens.append(tokens[-1] + law @ chain.cost)
        law = law @ chain.kernel
        distances.append(0.5 * np.abs(law - chain.target).sum())
    return np.array(distances), np.array(tokens)


def steps_to_distance(chain: Chain, start: int, level: float = 0.1, max_doublings: int = 40) -> tuple[int, float]:
    """(steps, expected decoded tokens) until the chain from tuple `start` is within `level` of
    pi_alpha in total variation; (-1, inf) if not within 2^max_doublings steps. The distance never
    grows along a chain with stationary pi, so the first such step is found by binary lifting over
    K^(2^i) and sum_{j < 2^i} K^j."""
    size = len(chain.target)
    origin = np.eye(size)[start]
    distance = lambda law: 0.5 * np.abs(law - chain.target).sum()
    if distance(origin) <= level:
        return 0, 0.0
    powers, sums = [chain.kernel], [np.eye(size)]  # K^(2^i) and sum_{j < 2^i} K^j
    while distance(origin @ powers[-1]) > level:
        if len(powers) > max_doublings:
            return -1, float("inf")
        sums.append(sums[-1] + powers[-1] @ sums[-1])
        powers.append(powers[-1] @ powers[-1])
    steps, law, before = 0, origin, np.zeros(size)  # the law after `steps` steps, the sum of the laws before
    for i in range(len(powers) - 2, -1, -1):
        if distance(law @ powers[i]) > level:
            steps, before, law = steps + 2**i, before + law @ sums[i], law @ powers[i]
    return steps + 1, float((before + law) @ chain.cost)
