"""Cut distributions q_cut(t | x) over the positions t = 0..n-1 of a completion (DESIGN section 2).

Each is a small frozen dataclass (hashable, so it is a static argument under jit) whose
`log_prob(entropy, length)` maps one row's per-position entropies [T] and its length n to
log q_cut over [T], -inf outside {0..n-1}. entropy[t] is the base model's entropy of the
distribution the token after cut t was drawn from, H_{t+1} in DESIGN's notation. Any object with
such a `log_prob` can be passed to the kernels.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp


class CutDistribution(Protocol):
    def log_prob(self, entropy: jax.Array, length: jax.Array) -> jax.Array: ...


def _support(entropy: jax.Array, length: jax.Array) -> jax.Array:
    return jnp.arange(entropy.shape[-1]) < length


def _normalized(log_weights: jax.Array, support: jax.Array) -> jax.Array:
    log_weights = jnp.where(support, log_weights, -jnp.inf)
    return log_weights - jax.nn.logsumexp(log_weights)


@dataclasses.dataclass(frozen=True)
class Uniform:
    """Random cut (Karan & Du): q_cut(t | x) = 1/n."""

    def log_prob(self, entropy, length):
        return _normalized(jnp.zeros_like(entropy), _support(entropy, length))


@dataclasses.dataclass(frozen=True)
class Entropy:
    """Cut where the base model was uncertain: q_cut(t | x) proportional to exp(H_{t+1} / beta)."""

    beta: float = 1.0

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta: must be > 0, got {self.beta}")

    def log_prob(self, entropy, length):
        return _normalized(entropy / self.beta, _support(entropy, length))


@dataclasses.dataclass(frozen=True)
class EntropyJump:
    """The published ECMH cut: weights max(0, H_{t+1} - H_t) ** power + floor, with H_0 = 0;
    uniform when every weight is zero. power = 4, floor = 0 is the paper's choice."""

    power: float = 4.0
    floor: float = 0.0

    def __post_init__(self):
        if not self.power > 0:
            raise ValueError(f"power: must be > 0, got {self.power}")
        if not self.floor >= 0:
            raise ValueError(f"floor: must be >= 0, got {self.floor}")

    def log_prob(self, entropy, length):
        support = _support(entropy, length)
        previous = jnp.concatenate([jnp.zeros_like(entropy[:1]), entropy[:-1]])
        weights = jnp.maximum(entropy - previous, 0.0) ** self.power + self.floor
        weights = jnp.where(support, weights, 0.0)
        all_zero = jnp.sum(weights) <= 0
        weights = jnp.where(all_zero, support.astype(weights.dtype), weights)
        return _normalized(jnp.log(weights), support)


@dataclasses.dataclass(frozen=True)
class Mixture:
    """eps * uniform + (1 - eps) * base: keeps every cut reachable (irreducibility)."""

    base: CutDistribution = EntropyJump()
    eps: float = 0.1

    def __post_init__(self):
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps: must be in [0, 1], got {self.eps}")

    def log_prob(self, entropy, length):
        uniform = Uniform().log_prob(entropy, length)
        base = self.base.log_prob(entropy, length)
        if self.eps == 0:
            return base
        if self.eps == 1:
            return uniform
        return jnp.logaddexp(jnp.log(self.eps) + uniform, jnp.log1p(-self.eps) + base)


CUTS = {"uniform": Uniform, "entropy": Entropy, "entropy_jump": EntropyJump, "mixture": Mixture}


def get_cut(name_or_cut, **params) -> CutDistribution:
    """A cut distribution by name (uniform, entropy, entropy_jump, mixture) or passed through.

    `mixture` takes eps and base (a name or a cut; default entropy_jump) and passes the remaining
    parameters to the base: get_cut("mixture", eps=0.1, base="entropy", beta=2.0).
    """
    if not isinstance(name_or_cut, str):
        if params:
            raise ValueError("cut parameters only apply to a cut given by name")
        if not callable(getattr(name_or_cut, "log_prob", None)):
            raise ValueError(f"cut: {name_or_cut!r} has no log_prob(entropy, length) method")
        return name_or_cut
    if name_or_cut not in CUTS:
        raise ValueError(f"cut: unknown cut distribution {name_or_cut!r}; choose from {', '.join(CUTS)}")
    if name_or_cut == "mixture":
        eps = params.pop("eps", 0.1)
        base = get_cut(params.pop("base", "entropy_jump"), **params)
        return Mixture(base, eps)
    try:
        return CUTS[name_or_cut](**params)
    except TypeError as error:
        raise ValueError(f"cut {name_or_cut!r}: {error}") from None
