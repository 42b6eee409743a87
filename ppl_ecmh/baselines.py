"""Baselines with the samplers' interface: each step draws a fresh, independent completion.

Ancestral sampling (tau = 1) is exact for p, so it is exact for pi_alpha only at alpha = 1.
Per-token low-temperature sampling (tau = 1/alpha) sharpens each conditional, not the joint: it is
NOT pi_alpha (DESIGN section 1) and serves as the baseline the MH kernels are measured against.
"""

from __future__ import annotations

import jax.numpy as jnp

from ppl_ecmh.lm.generation import extend, sequence_log_prob
from ppl_ecmh.mh import SuffixMHInfo, SuffixMHState


def independent_step(rng_key, state: SuffixMHState, lm, *, tau, alpha, limit, active=None):
    """Replace every active row by a new draw from the model at temperature tau (always 'accepted')."""
    seqs = state.seqs
    active = jnp.ones_like(seqs.length, bool) if active is None else active
    keep = jnp.where(active, 0, seqs.length)
    new, cache = extend(lm, rng_key, seqs, state.cache, keep, jnp.where(active, limit, keep), tau)
    info = SuffixMHInfo(
        accepted=active,
        accept_prob=active.astype(jnp.float32),
        cut=jnp.zeros_like(seqs.length),
        old_suffix_length=jnp.where(active, seqs.length, 0),
        new_suffix_length=jnp.where(active, new.length, 0),
        num_generated=jnp.where(active, new.length, 0),
        log_target=alpha * sequence_log_prob(new),
    )
    return SuffixMHState(new, cache), info
