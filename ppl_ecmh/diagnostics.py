"""Runs as ArviZ InferenceData, and the chain diagnostics computed from it.

Data and statistics are separate layers that meet only through the InferenceData (as in ArviZ):
`to_inference_data` converts a `runner.Run`; `summary` and `acceptance_by_chain` read it.

Groups: `posterior` holds per-draw scalar functionals (log_p = log p(x), log_target = alpha log p(x),
length); `sample_stats` the kernel's per-draw statistics and wall time (for Power-SMC also the ESS
after each SMC step and the final particle log weights); `completions` (a custom
group) the token ids, per-position base-model entropies and decoded texts of every draw; the run settings are attributes (JSON
values), so a NetCDF file round-trips without loss.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

POSTERIOR_FIELDS = ("log_target", "length")
SAMPLE_STATS_FIELDS = ("accepted", "accept_prob", "cut", "old_suffix_length", "new_suffix_length", "num_generated")


def import_arviz():
    """ArviZ without the FutureWarning that 0.23 prints about its coming 1.x API."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.x refactor on import
        import arviz

    return arviz


def to_inference_data(run, texts=None, model: str | None = None, prompt: str | None = None):
    """InferenceData of a `ppl_ecmh.runner.Run`; `texts[chain][draw]` are the decoded completions."""
    import xarray as xr

    az = import_arviz()
    chains, draws, positions = run.tokens.shape
    alpha = run.settings["alpha"]
    posterior = {"log_target": run.stats["log_target"], "log_p": run.stats["log_target"] / alpha,
                 "length": run.stats["length"]}
    stats = {field: run.stats[field] for field in SAMPLE_STATS_FIELDS}
    stats |= {field: value for field, value in run.stats.items() if field not in POSTERIOR_FIELDS + SAMPLE_STATS_FIELDS}
    dims = {"smc_ess": ["smc_step"], "smc_log_weights": ["particle"]}
    stats["wall_time"] = np.broadcast_to(run.wall_time, (chains, draws)).copy()
    attrs = {"settings": json.dumps(run.settings), "model": model or "", "prompt": prompt or "",
             "initial_tokens_generated": run.initial_tokens_generated}
    idata = az.from_dict(posterior=posterior, sample_stats=stats, attrs=attrs,
                         dims={field: dim for field, dim in dims.items() if field in stats})
    completions = xr.Dataset(
        {"tokens": (("chain", "draw", "position"), run.tokens.astype(np.int32)),
         "entropy": (("chain", "draw", "position"), run.entropy.astype(np.float32))},
        coords={"chain": np.arange(chains), "draw": np.arange(draws), "position": np.arange(positions)},
    )
    if texts is not None:
        completions["text"] = (("chain", "draw"), np.asarray(texts, dtype=str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz warns that `completions` is not a standard group
        idata.add_groups({"completions": completions})
    return idata


def settings(idata) -> dict:
    return json.loads(idata.attrs["settings"])


def save(idata, path) -> None:
    idata.to_netcdf(str(path), engine="h5netcdf")


def load(path):
    az = import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return az.from_netcdf(str(path), engine="h5netcdf")


def total_tokens(idata) -> int:
    return int(idata.sample_stats["num_generated"].sum()) + int(idata.attrs.get("initial_tokens_generated", 0))


def summary(idata, var_names=("log_target", "length")):
    """Rank-normalized R-hat, bulk and tail ESS, and ESS per 1,000 generated tokens, per functional."""
    import pandas as pd

    az = import_arviz()
    rows = {}
    tokens = max(total_tokens(idata), 1)
    for name in var_names:
        values = np.asarray(idata.posterior[name].values, dtype=float)  # [chain, draw]
        rhat = float(az.rhat(values, method="rank")) if values.shape[0] > 1 else np.nan
        ess_bulk = float(az.ess(values, method="bulk"))
        ess_tail = float(az.ess(values, method="tail"))
        rows[name] = {"mean": values.mean(), "sd": values.std(), "r_hat": rhat, "ess_bulk": ess_bulk,
                      "ess_tail": ess_tail, "ess_bulk_per_1k_tokens": 1000 * ess_bulk / tokens}
    return pd.DataFrame.from_dict(rows, orient="index")


def acceptance_by_chain(idata) -> np.ndarray:
    return idata.sample_stats["accepted"].mean("draw").values


def answer_agreement(idata, extract=None) -> tuple[float, str]:
    """Share of chains whose last draw gives the most common answer, and that answer.

    `extract(text) -> answer` maps a completion to its final answer (a task's extractor); by default
    the whitespace-normalized completion itself is the answer.
    """
    extract = extract or (lambda text: " ".join(text.split()))
    answers = [extract(str(text)) for text in idata.completions["text"].values[:, -1]]
    values, counts = np.unique(np.asarray(answers, dtype=str), return_counts=True)
    return float(counts.max() / len(answers)), str(values[np.argmax(counts)])
