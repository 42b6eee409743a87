"""Continuous batching for MCMC (DESIGN section 7): W slots, each running its own chain, refilled
from a queue of (problem, chain) work, with randomness keyed by work.

- `schedule`: what each step of a chain does (independent draw, suffix MH, block-wise stages);
- `slots`: the device loop (one token per slot per iteration, accept/reject as proposals end),
  which the NumPyro kernels (`ppl_ecmh.numpyro.kernels`) drive too;
- `scheduler`: the host queue (admission, collection of finished chains, wall-time shares).
"""

from ppl_ecmh.engine.schedule import Schedule
from ppl_ecmh.engine.scheduler import (ChainResult, Engine, EngineStats, WidthShare, WorkItem, chain_key, chain_keys,
                                       work_keys)

__all__ = ["ChainResult", "Engine", "EngineStats", "Schedule", "WidthShare", "WorkItem", "chain_key", "chain_keys",
           "work_keys"]
