"""Reports of one or more runs: a self-contained HTML file (figures embedded) or Markdown with the
figures beside it, and each run's chain explorer (`explorer`) beside the report. Numbers come from
`diagnostics`, figures from `plots`, both from InferenceData."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ppl_ecmh.analysis import diagnostics, explorer, plots

SAMPLE_COMPLETIONS = 4


def comparison_table(runs: dict) -> list[dict]:
    """One row per run: draws, acceptance, ESS per 1k tokens and R-hat of alpha log p (nan where
    not estimable, the reasons in `not_estimable`, failed limits in `warnings`), agreement of the
    chains' final completions, tokens, wall time."""
    rows = []
    for name, idata in runs.items():
        estimates = diagnostics.diagnose(idata, var_names=("log_target",))["log_target"]
        rows.append({
            "sampler": name,
            "draws": int(idata.posterior.sizes["draw"]),
            "acceptance": float(idata.sample_stats["accepted"].mean()),
            "ess_bulk_per_1k_tokens": estimates["ess_bulk_per_1k_tokens"].value,
            "r_hat": estimates["r_hat"].value,
            "mean_alpha_log_p": estimates["mean"].value,
            "answer_agreement": diagnostics.answer_agreement(idata)[0],
            "tokens": diagnostics.total_tokens(idata),
            "wall_time_s": float(idata.sample_stats["wall_time"].values[0].sum()),
            "not_estimable": "; ".join(f"{key}: {estimates[key].reason}" for key in ("ess_bulk_per_1k_tokens", "r_hat")
                                       if not estimates[key].estimable),
            "warnings": "; ".join(diagnostics.warnings_of(estimates, idata.posterior.sizes["chain"])),
        })
    return rows


def _figures(runs: dict) -> list[tuple[str, object]]:
    figures = []
    if len(runs) > 1:
        figures.append(("kernel comparison", plots.kernel_comparison(runs)))
    figures.append(("cut positions", plots.cut_distribution(runs)))
    for name, idata in runs.items():
        figures.append((f"{name}: trace of alpha log p", plots.log_target_trace(idata, title=name)))
        figures.append((f"{name}: acceptance by cut position", plots.acceptance_by_cut(idata)))
        figures.append((f"{name}: entropy profile", plots.entropy_profile(idata)))
    return figures


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.3g}"
    return str(value)


def _sections(runs: dict):
    """(title, header, rows) tables of the report, shared by both formats."""
    table = comparison_table(runs)
    yield "Samplers", list(table[0]), [[_fmt(v) for v in row.values()] for row in table]
    for name, idata in runs.items():
        summary = diagnostics.summary(idata)
        yield (f"{name}: diagnostics", ["functional"] + list(summary.columns),
               [[index] + [_fmt(v) for v in row] for index, row in summary.iterrows()])
        acceptance = diagnostics.acceptance_by_chain(idata)
        yield (f"{name}: acceptance per chain", ["chain", "acceptance"],
               [[str(c), _fmt(float(a))] for c, a in enumerate(acceptance)])
        settings = diagnostics.settings(idata) | {"model": idata.attrs.get("model", ""), "prompt": idata.attrs.get("prompt", "")}
        yield f"{name}: settings", ["setting", "value"], [[k, _fmt(v)] for k, v in settings.items() if k != "prompt_tokens"]
        if "text" in idata.completions:
            texts = idata.completions["text"].values
            log_target = idata.posterior["log_target"].values
            yield (f"{name}: completions (last draw of each chain)", ["chain", "alpha log p", "completion"],
                   [[str(c), _fmt(float(log_target[c, -1])), str(texts[c, -1])]
                    for c in range(min(SAMPLE_COMPLETIONS, texts.shape[0]))])


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def explorer_paths(runs: dict, path) -> dict[str, Path]:
    """Where the chain explorer of each run goes: beside the report, named after it and the run."""
    path = Path(path)
    safe = lambda name: re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    return {name: path.with_name(f"{path.stem}_explorer_{safe(name)}.html") for name in runs}


def _write_report(runs: dict, path, format: str) -> Path:
    """The report, and beside it one chain explorer per run (listed in the report)."""
    explorers = explorer_paths(runs, path)
    for name, explorer_path in explorers.items():
        explorer.write_explorer({name: runs[name]}, explorer_path)
    listing = ("Chain explorers (open in a browser)", ["run", "file"],
               [[name, file.name] for name, file in explorers.items()])
    return write_document("ppl-ecmh report", [*_sections(runs), listing], _figures(runs), path, format)


def write_html(runs: dict, path) -> Path:
    return _write_report(runs, path, "html")


def write_markdown(runs: dict, path) -> Path:
    return _write_report(runs, path, "md")


def write_document(title: str, sections, figures, path, format: str = "html") -> Path:
    """Tables (title, header, rows of strings) and figures (title, Figure) as one self-contained
    HTML file, or as Markdown with the figures in `<name>_figures/` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write = _write_html if format == "html" else _write_markdown
    path.write_text(write(title, list(sections), figures, path), encoding="utf-8")
    return path


def _write_html(title, sections, figures, path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;"
             "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
             f"img{{max-width:100%}}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, header, rows in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>")
        parts.append("</table>")
    for heading, figure in figures:
        data = base64.b64encode(_png(figure)).decode()
        parts.append(f"<h2>{html.escape(heading)}</h2><img alt='{html.escape(heading)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _write_markdown(title, sections, figures, path) -> str:
    figure_dir = path.with_suffix("").name + "_figures"
    (path.parent / figure_dir).mkdir(parents=True, exist_ok=True)
    for stale in (path.parent / figure_dir).glob("figure_*.png"):  # a rewrite with fewer figures leaves none behind
        stale.unlink()
    lines = [f"# {title}", ""]
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    for heading, header, rows in sections:
        lines += [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    for index, (heading, figure) in enumerate(figures):
        name = f"{figure_dir}/figure_{index:02d}.png"
        (path.parent / name).write_bytes(_png(figure))
        lines += [f"## {heading}", "", f"![{heading}]({name})", ""]
    return "\n".join(lines)
