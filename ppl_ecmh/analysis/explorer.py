"""The chain explorer: a run as one self-contained HTML page (script, styles and data inline, no
network) in which a person walks through its chains. For each chain and draw the page shows the
completion token by token, shaded by the base model's entropy, the cut of the draw's last MH step,
that step's two suffixes side by side (the current one and the proposal) with the acceptance
probability and the decision, and every chain's alpha log p trace, whose points open their draw.

Draws are stored as differences: a draw keeps a prefix of the draw before it, so only the tokens
after the common prefix are written (the tokens a run decoded, not chains x draws x T_max), and
the unkept side of each step only past its common prefix with the draw. Token ids go in as int32
and entropies as uint8 (1/16 nat), deflated and base64-encoded; the page inflates them with the
browser's DecompressionStream and renders only the draw on screen, so 64 chains x 100 draws x
3,072 tokens stay responsive (benchmarks/explorer.py measures the size and the first paint).

`write_explorer` writes the page, `explore` shows it in Jupyter, `eval_page` is the view of an
evaluation directory: per problem, each sampler's completion beside its grade.
"""

from __future__ import annotations

import base64
import html
import json
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from ppl_ecmh.analysis import diagnostics
from ppl_ecmh.runner import run_of_mcmc

ENTROPY_STEP = 1 / 16  # nats per stored entropy unit (uint8: up to 15.9 nats)
FRAME_HEIGHT = 760  # pixels of the frame a notebook shows the page in


def _packed(array: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 6)).decode("ascii")


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def chain_data(idata, name: str = "run") -> dict:
    """One run's page data (JSON values): settings, per-draw statistics, and every draw's tokens
    and entropies as differences (see the module docstring)."""
    completions, stats = idata.completions, idata.sample_stats
    tokens, entropy = completions["tokens"].values, completions["entropy"].values
    lengths = idata.posterior["length"].values.astype(int)
    chains, draws = lengths.shape
    has_unkept = "unkept_tokens" in completions
    if has_unkept:
        unkept_tokens, unkept_entropy = completions["unkept_tokens"].values, completions["unkept_entropy"].values
        unkept_lengths = completions["unkept_length"].values.astype(int)
    index = np.zeros((chains, draws, 6), np.int32)  # shared, offset, count; the same for the unkept side
    written_tokens, written_entropy, offset = [], [], 0

    def write(token_row, entropy_row, start, stop):
        nonlocal offset
        written_tokens.append(token_row[start:stop].astype(np.int32))
        written_entropy.append(np.clip(np.rint(entropy_row[start:stop] / ENTROPY_STEP), 0, 255).astype(np.uint8))
        offset += stop - start
        return offset - (stop - start), stop - start

    for chain in range(chains):
        previous = np.zeros(0, np.int32)
        for draw in range(draws):
            row = tokens[chain, draw, : lengths[chain, draw]]
            shared = _common_prefix(previous, row)
            index[chain, draw, :3] = shared, *write(tokens[chain, draw], entropy[chain, draw], shared, len(row))
            if has_unkept:
                other = unkept_tokens[chain, draw, : unkept_lengths[chain, draw]]
                common = _common_prefix(row, other)
                index[chain, draw, 3:] = common, *write(unkept_tokens[chain, draw], unkept_entropy[chain, draw],
                                                        common, len(other))
            previous = row
    pieces = {}
    if "piece_id" in completions:
        pieces = dict(zip(completions["piece_id"].values.tolist(), completions["piece_text"].values.tolist()))
    settings = diagnostics.settings(idata)
    rounded = lambda values, digits: np.round(np.asarray(values, np.float64), digits).tolist()
    # the decision of the draw's last step; runs without one (Power-SMC, TMC) show the draw's own
    last = "last_" if "last_accepted" in stats else ""
    accepted = np.asarray(stats[f"{last}accepted"].values, np.float64) >= 0.5
    return dict(
        name=name, model=idata.attrs.get("model", ""), prompt=idata.attrs.get("prompt", ""),
        settings={key: value for key, value in settings.items() if key not in ("prompt_tokens", "engine")},
        chains=chains, draws=draws, hasUnkept=has_unkept, entropyStep=ENTROPY_STEP,
        logTarget=rounded(idata.posterior["log_target"].values, 3), length=lengths.tolist(),
        acceptProb=rounded(stats[f"{last}accept_prob"].values, 4), accepted=accepted.tolist(),
        cut=stats["cut"].values.astype(int).tolist(), pieces=pieces,
        index=_packed(index), tokens=_packed(np.concatenate(written_tokens or [np.zeros(0, np.int32)])),
        entropy=_packed(np.concatenate(written_entropy or [np.zeros(0, np.uint8)])),
    )


def _asset(name: str) -> str:
    return resources.files("ppl_ecmh.analysis").joinpath("explorer_assets", name).read_text(encoding="utf-8")


def _page(title: str, view: str, data) -> str:
    """The page: styles, the data as JSON (`</` escaped, so no text of a run can end the script)
    and the script, all inline."""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<style>{_asset('explorer.css')}</style></head>"
            f"<body data-view='{view}'><div id='app'><p class='loading'>Loading {html.escape(title)}…</p></div>"
            f"<script type='application/json' id='data'>{payload}</script>"
            f"<script>{_asset('explorer.js')}</script></body></html>")


def explorer_html(runs: dict, title: str = "ppl-ecmh chain explorer") -> str:
    """The page of one or more runs ({name: InferenceData}), chosen from a menu when several."""
    return _page(title, "chains", [chain_data(idata, name) for name, idata in runs.items()])


def write_explorer(runs: dict, path) -> Path:
    return Explorer(explorer_html(runs)).save(path)


def eval_page(title: str, problems: list[dict]) -> str:
    """The view of an evaluation: `problems` as [{id, records: [{sampler, seed, correct, answer,
    completion}]}], each problem's samplers side by side."""
    return _page(title, "eval", dict(title=title, problems=problems))


class Explorer:
    """A page that Jupyter shows inline (in a frame of its own, so its script runs apart from the
    notebook's) and that `save` writes to a file."""

    def __init__(self, page: str):
        self.page = page

    def _repr_html_(self) -> str:
        return (f"<iframe srcdoc=\"{html.escape(self.page, quote=True)}\" style='width:100%;height:{FRAME_HEIGHT}px;"
                "border:1px solid #ddd' sandbox='allow-scripts'></iframe>")

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.page, encoding="utf-8")
        return path


def explore(runs, model=None) -> Explorer:
    """The chain explorer of a run or of several ({name: run}): InferenceData (`ppl-ecmh sample
    --out`, `diagnostics.to_inference_data`), a `runner.Run`, or a `numpyro.infer.MCMC` run with
    `extra_fields=runner.RECORDED_FIELDS`; tokens show as `model`'s text when a model
    (`load_model`'s) is given."""
    if not isinstance(runs, dict):
        runs = {None: runs}
    data = {}
    for name, run in runs.items():
        if hasattr(run, "get_extra_fields"):  # a NumPyro MCMC run
            run = run_of_mcmc(run)
        if not hasattr(run, "posterior"):  # a Run: converted, with its tokens' text
            run = diagnostics.to_inference_data(run, pieces=None if model is None else model.pieces(*run.token_arrays))
        data[name or diagnostics.settings(run).get("sampler", "run")] = run
    return Explorer(explorer_html(data))
