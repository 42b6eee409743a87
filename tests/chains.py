"""Synthetic chains whose mixing is known, for the diagnostics and mixing tests."""

import numpy as np


def ar1(rng, rho: float, chains: int = 4, draws: int = 200, start=None) -> np.ndarray:
    """AR(1) chains [chain, draw] with unit stationary variance and integrated autocorrelation time
    (1 + rho) / (1 - rho): stationary, or from `start` [chain]. `rng`: a Generator or a seed."""
    rng = np.random.default_rng(rng)
    x = np.empty((chains, draws))
    x[:, 0] = rng.normal(size=chains) if start is None else start
    noise = rng.normal(size=(chains, draws)) * np.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return x
