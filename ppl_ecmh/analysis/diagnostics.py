"""Runs as ArviZ InferenceData, and the chain diagnostics computed from it.

Data and statistics are separate layers that meet only through the InferenceData (as in ArviZ):
`to_inference_data` converts a `runner.Run`; `summary` and `acceptance_by_chain` read it.

Groups: `posterior` holds per-draw scalar functionals (log_p = log p(x), log_target = alpha log p(x),
length); `sample_stats` the kernel's per-draw statistics and wall time (for Power-SMC also the ESS
after each SMC step and the final particle log weights); `completions` (a custom
group) the token ids, per-position base-model entropies and decoded texts of every draw, on the engine
the sequence each draw's last step did not keep (`unkept_*`), and the text of each token id used
(`piece_id`, `piece_text`); the run settings are attributes (JSON values), so a NetCDF file round-trips
without loss, and so are the diagnostics (`diagnostics_attribute`).

A diagnostic is a number only where the draws determine it: `rhat` and `ess` return an `Estimate`
that is nan with its reason otherwise (too few chains or draws per chain, a constant functional,
ArviZ's cap), and every table, report and attribute shows that reason instead of a number. They are
computed by arviz-stats (the next ArviZ, on `xarray.DataTree`) when it is installed and by arviz
0.23 otherwise: the same algorithms, the same numbers (`BACKEND`). `to_datatree` gives a run as
an `xarray.DataTree` with the same groups, for arviz-base and arviz-stats.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from typing import NamedTuple

import numpy as np

POSTERIOR_FIELDS = ("log_target", "length")
SAMPLE_STATS_FIELDS = ("accepted", "accept_prob", "cut", "old_suffix_length", "new_suffix_length", "num_generated")


# what computes ESS and R-hat: arviz-stats where it is installed (pip install "ppl-ecmh[arviz-next]")
BACKEND = "arviz-stats" if importlib.util.find_spec("arviz_stats") else "arviz"
TAIL_PROBABILITIES = (0.05, 0.95)  # the quantiles tail ESS follows, arviz 0.23's default


def _backend_ess(values: np.ndarray, method: str) -> float:
    if BACKEND == "arviz-stats":
        import arviz_stats

        return float(arviz_stats.ess(values, method=method, **({"prob": TAIL_PROBABILITIES} if method == "tail" else {})))
    return float(import_arviz().ess(values, method=method))


def _backend_rhat(values: np.ndarray) -> float:
    if BACKEND == "arviz-stats":
        import arviz_stats

        return float(arviz_stats.rhat(values, method="rank"))
    return float(import_arviz().rhat(values, method="rank"))


def import_arviz():
    """ArviZ without the FutureWarning that 0.23 prints about its coming 1.x API."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.x refactor on import
        import arviz

    return arviz


def to_inference_data(run, texts=None, model: str | None = None, prompt: str | None = None, pieces=None):
    """InferenceData of a `ppl_ecmh.runner.Run`; `texts[chain][draw]` are the decoded completions,
    `pieces` maps token ids to their text (`Model.pieces`), for the chain explorer."""
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
    if run.last_step is not None:  # the decision of each draw's last step, of several when a draw has more
        stats |= {name: run.last_step[name] for name in ("last_accepted", "last_accept_prob")}
    attrs = {"settings": json.dumps(run.settings), "model": model or "", "prompt": prompt or "",
             "initial_tokens_generated": run.initial_tokens_generated}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "More chains", UserWarning)  # many short chains are a valid run
        idata = az.from_dict(posterior=posterior, sample_stats=stats, attrs=attrs,
                             dims={field: dim for field, dim in dims.items() if field in stats})
    completions = xr.Dataset(
        {"tokens": (("chain", "draw", "position"), run.tokens.astype(np.int32)),
         "entropy": (("chain", "draw", "position"), run.entropy.astype(np.float32))},
        coords={"chain": np.arange(chains), "draw": np.arange(draws), "position": np.arange(positions)},
    )
    if texts is not None:
        completions["text"] = (("chain", "draw"), np.asarray(texts, dtype=str))
    if run.last_step is not None:  # what each draw's last step did not keep (the per-chain samplers)
        completions["unkept_tokens"] = (("chain", "draw", "position"), run.last_step["unkept_tokens"].astype(np.int32))
        completions["unkept_entropy"] = (("chain", "draw", "position"),
                                         run.last_step["unkept_entropy"].astype(np.float32))
        completions["unkept_length"] = (("chain", "draw"), run.last_step["unkept_length"].astype(np.int32))
    if pieces:
        ids = np.asarray(sorted(pieces), np.int32)
        completions["piece_id"] = (("piece",), ids)
        completions["piece_text"] = (("piece",), np.asarray([pieces[i] for i in ids.tolist()], dtype=str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz warns that `completions` is not a standard group
        idata.add_groups({"completions": completions})
    idata.attrs["diagnostics"] = diagnostics_attribute(idata)
    return idata


def to_datatree(idata):
    """The run as an `xarray.DataTree` (the next ArviZ's format): the same groups (posterior,
    sample_stats, completions) and the same attributes (settings, diagnostics). It writes with
    `to_netcdf` and reads back with `xarray.open_datatree` or arviz-base."""
    import xarray as xr

    tree = xr.DataTree.from_dict({f"/{group}": idata[group] for group in idata.groups()})
    tree.attrs = dict(idata.attrs)
    return tree


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


# When ESS and R-hat are numbers that depend on the data. ArviZ 0.23 (arviz.stats.diagnostics)
# returns nan below 4 draws per chain, and for R-hat below 2 chains. Its ESS splits each chain in
# half and sums autocorrelations by Geyer's initial positive sequence, whose loop needs split halves
# of at least 5 draws: with fewer than 10 draws per chain it sums nothing and returns its cap
# N log10 N (N the number of split draws) for any data. The cap can also bind on longer chains,
# when the autocorrelation estimate falls to ArviZ's floor; a constant functional gets ESS = N.
# At the other end, chains shorter than their autocorrelation time: the truncated sum runs out of
# lags, and the estimate sits near its floor of about one effective draw per half-chain whatever the
# true time is (4 chains of 20 draws: 7.1 to 8.7 for AR(1) chains with rho 0.99 and 0.999 alike).
# An ESS below MIN_ESS_PER_CHAIN effective draws per chain is therefore not reported.
MIN_DRAWS_RHAT = 4
MIN_CHAINS_RHAT = 2
MIN_DRAWS_ESS = 10
MIN_ESS_PER_CHAIN = 2.5
# Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021): use the draws when R-hat <= 1.01 and the
# bulk ESS is at least 100 per chain.
RHAT_LIMIT = 1.01
ESS_PER_CHAIN = 100


class Estimate(NamedTuple):
    """A diagnostic's value, or nan with the reason it cannot be estimated from these draws."""

    value: float
    reason: str = ""

    @property
    def estimable(self) -> bool:
        return not self.reason


def _not_estimable(reason: str) -> Estimate:
    return Estimate(float("nan"), reason)


def _constant(values: np.ndarray) -> bool:
    return float(values.max() - values.min()) < np.finfo(float).resolution


def rhat(values) -> Estimate:
    """Rank-normalized split R-hat of draws [chain, draw], when the draws can tell it."""
    values = np.asarray(values, dtype=float)
    chains, draws = values.shape
    if chains < MIN_CHAINS_RHAT:
        return _not_estimable(f"needs >= {MIN_CHAINS_RHAT} chains")
    if draws < MIN_DRAWS_RHAT:
        return _not_estimable(f"needs >= {MIN_DRAWS_RHAT} draws per chain")
    if _constant(values):
        return _not_estimable("constant functional")
    value = _backend_rhat(values)
    return Estimate(value) if np.isfinite(value) else _not_estimable("ArviZ returned nan")


def ess(values, method: str = "bulk", keep_floor: bool = False) -> Estimate:
    """Bulk or tail ESS of draws [chain, draw], when it depends on the draws (see the limits above).
    `keep_floor` returns ArviZ's value near its floor too, for callers that want its size whatever
    it means (the exactness tests size their Monte Carlo bounds with it)."""
    values = np.asarray(values, dtype=float)
    chains, draws = values.shape
    if draws < MIN_DRAWS_ESS:
        return _not_estimable(f"needs >= {MIN_DRAWS_ESS} draws per chain")
    if _constant(values):
        return _not_estimable("constant functional")
    if method == "tail" and any(_constant((values <= q).astype(float)) for q in np.quantile(values, (0.05, 0.95))):
        return _not_estimable("a 5% or 95% quantile is an extreme value (ties)")
    split = chains * 2 * (draws // 2)
    value = _backend_ess(values, method)
    if not np.isfinite(value):
        return _not_estimable("ArviZ returned nan")
    if value >= split * np.log10(split) * (1 - 1e-9):
        return _not_estimable("at ArviZ's cap N log10 N: autocorrelations not resolved")
    if value < MIN_ESS_PER_CHAIN * chains and not keep_floor:
        return _not_estimable(f"below {MIN_ESS_PER_CHAIN} effective draws per chain, near ArviZ's floor: the "
                              "chains are shorter than their autocorrelation time")
    return Estimate(value)


ESTIMATES = ("r_hat", "ess_bulk", "ess_tail", "ess_bulk_per_1k_tokens")


def diagnose(idata, var_names=("log_target", "length")) -> dict[str, dict[str, Estimate]]:
    """Per functional: mean, sd, rank-normalized R-hat, bulk and tail ESS, and bulk ESS per 1,000
    generated tokens, each an `Estimate` (nan with a reason where the draws cannot tell it)."""
    tokens = max(total_tokens(idata), 1)
    out = {}
    for name in var_names:
        values = np.asarray(idata.posterior[name].values, dtype=float)  # [chain, draw]
        bulk = ess(values, "bulk")
        out[name] = {"mean": Estimate(float(values.mean())), "sd": Estimate(float(values.std())),
                     "r_hat": rhat(values), "ess_bulk": bulk, "ess_tail": ess(values, "tail"),
                     "ess_bulk_per_1k_tokens": bulk._replace(value=1000 * bulk.value / tokens)}
    return out


def warnings_of(estimates: dict[str, Estimate], chains: int) -> list[str]:
    """The estimates that fail the limits of Vehtari et al. (2021)."""
    found = []
    if estimates["r_hat"].estimable and estimates["r_hat"].value > RHAT_LIMIT:
        found.append(f"R-hat {estimates['r_hat'].value:.3g} > {RHAT_LIMIT}")
    if estimates["ess_bulk"].estimable and estimates["ess_bulk"].value < ESS_PER_CHAIN * chains:
        found.append(f"bulk ESS {estimates['ess_bulk'].value:.3g} < {ESS_PER_CHAIN} per chain x {chains} chains")
    return found


def summary(idata, var_names=("log_target", "length")):
    """`diagnose` as a DataFrame: nan where not estimable, the reasons in column `not_estimable`,
    and in `warnings` what fails the limits of Vehtari et al. (2021)."""
    import pandas as pd

    chains = idata.posterior.sizes["chain"]
    rows = {}
    for name, estimates in diagnose(idata, var_names).items():
        rows[name] = {key: estimate.value for key, estimate in estimates.items()}
        rows[name]["not_estimable"] = "; ".join(f"{key}: {estimates[key].reason}" for key in ESTIMATES[:-1]
                                                if not estimates[key].estimable)
        rows[name]["warnings"] = "; ".join(warnings_of(estimates, chains))
    return pd.DataFrame.from_dict(rows, orient="index")


def format_summary(table) -> str:
    """A `summary` table as printed text: n/a where not estimable, then the reasons and warnings."""
    shown = table.drop(columns=["not_estimable", "warnings"]).map(lambda value: f"{value:.3f}")
    shown = shown.where(table.drop(columns=["not_estimable", "warnings"]).notna(), "n/a")
    lines = [shown.to_string()]
    for name, row in table.iterrows():
        lines += [f"n/a: {name} {part}" for part in filter(None, row["not_estimable"].split("; "))]
        lines += [f"warning: {name} {part}" for part in filter(None, row["warnings"].split("; "))]
    if table["warnings"].any():
        lines.append(f"(Vehtari et al. 2021: use the draws when R-hat <= {RHAT_LIMIT} and bulk ESS >= "
                     f"{ESS_PER_CHAIN} per chain)")
    return "\n".join(lines)


def diagnostics_attribute(idata, var_names=("log_target", "length")) -> str:
    """`diagnose` as JSON for the InferenceData attributes: null, never a number, where not
    estimable, with the reason beside it."""
    return json.dumps({name: {key: (estimate.value if estimate.estimable else None) for key, estimate in estimates.items()}
                       | {"not_estimable": {key: e.reason for key, e in estimates.items() if not e.estimable}}
                       for name, estimates in diagnose(idata, var_names).items()})


def acceptance_by_chain(idata) -> np.ndarray:
    return idata.sample_stats["accepted"].mean("draw").values


def answer_agreement(idata, extract=None) -> tuple[float, str]:
    """Share of chains whose last draw gives the most common answer, and that answer.

    `extract(text) -> answer` maps a completion to its final answer (a task's extractor); by default
    the whitespace-normalized completion itself is the answer, or its token ids in a run kept
    without text (a NumPyro run's, say).
    """
    completions = idata.completions
    if "text" in completions:
        extract = extract or (lambda text: " ".join(text.split()))
        answers = [extract(str(text)) for text in completions["text"].values[:, -1]]
    elif extract is None:
        lengths = idata.posterior["length"].values[:, -1].astype(int)
        answers = [" ".join(map(str, tokens[:n])) for tokens, n in zip(completions["tokens"].values[:, -1], lengths)]
    else:
        raise ValueError("answer_agreement: extracting answers needs the completions' text (to_inference_data's texts)")
    values, counts = np.unique(np.asarray(answers, dtype=str), return_counts=True)
    return float(counts.max() / len(answers)), str(values[np.argmax(counts)])
