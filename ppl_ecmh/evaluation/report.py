"""The report of an evaluation directory: settings, accuracy, pass@k, paired tests, figures, and a
few graded completions per sampler, as HTML or Markdown (`ppl_ecmh.analysis.report.write_document`),
and the chain explorer's view of every completion beside its grade."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ppl_ecmh.analysis import explorer
from ppl_ecmh.analysis.report import write_document
from ppl_ecmh.evaluation import figures, summary
from ppl_ecmh.evaluation.store import RECORDS, read_settings
from ppl_ecmh.evaluation.store import EVAL_FIELDS, RecordStore

EXAMPLES_PER_SAMPLER = 3
COMPLETION_CHARACTERS = 400


def _table(frame, digits: int = 3):
    header = list(frame.columns)
    rows = [[("" if math.isnan(value) else f"{value:.{digits}g}") if isinstance(value, float) else str(value)
             for value in row]
            for row in frame.itertuples(index=False)]
    return header, rows


def eval_sections(settings, frame, pairs, examples: bool = True):
    yield "Settings", ["setting", "value"], [[key, str(value)] for key, value in dataclasses.asdict(settings).items()]
    yield ("Accuracy (95% Wilson interval over problems; seeds averaged within a problem)",
           *_table(summary.accuracy_table(frame)))
    yield (f"Completions (share cut off at {settings.max_new_tokens} tokens; log p per token, which p^alpha "
           "sharpening should raise)", *_table(summary.completion_table(frame, settings.alpha, settings.max_new_tokens)))
    grading = summary.grading_table(frame)
    if not grading.empty:
        yield ("Grading (how each test run ended: an early exit with status 0 is a fail; sandbox errors and "
               "graders that raised are fails that say nothing of the completion)", *_table(grading))
    passes = summary.pass_at_k(frame)
    yield "pass@k (unbiased estimator)", *_table(passes)
    if not pairs.empty:
        yield ("Paired comparisons (difference = sampler - versus; bootstrap 95% interval over problems; "
               "McNemar exact p on discordant pairs, and Holm-adjusted over the table)", *_table(pairs))
    for sampler, group in frame.groupby("sampler", sort=False) if examples else ():
        rows = [[str(r.problem_id), str(r.seed), str(r.correct), str(r.answer)[:80],
                 str(r.completion)[:COMPLETION_CHARACTERS]] for r in group.head(EXAMPLES_PER_SAMPLER).itertuples()]
        yield f"{sampler}: first completions", ["problem", "seed", "correct", "answer", "completion"], rows


def eval_figures(frame, pairs):
    table = summary.accuracy_table(frame)
    result = [("accuracy", figures.accuracy_intervals(table)),
              ("accuracy against tokens spent", figures.accuracy_against_cost(table))]
    if not pairs.empty:
        result.append(("paired differences", figures.paired_differences(pairs)))
    passes = summary.pass_at_k(frame)
    if passes["k"].max() > 1:
        result.append(("pass@k", figures.pass_at_k_curves(passes)))
    return result


def eval_explorer_path(report_path) -> Path:
    report_path = Path(report_path)
    return report_path.with_name(f"{report_path.stem}_explorer.html")


def eval_problems(records: list[dict]) -> list[dict]:
    """Each problem's records, in the order problems first appear, samplers in that order too:
    the eval view of the chain explorer (`explorer.eval_page`)."""
    problems: dict[str, list[dict]] = {}
    for record in records:
        problems.setdefault(record["problem_id"], []).append(
            {field: record.get(field) for field in ("sampler", "seed", "correct", "answer", "completion")})
    return [dict(id=problem_id, records=group) for problem_id, group in problems.items()]


def _eval_title(settings) -> str:
    return f"ppl-ecmh evaluation: {settings.task}"


def explore_eval(out_dir) -> explorer.Explorer:
    """Every completion of `out_dir` beside its grade, problem by problem: the page the report
    writes beside itself, shown inline in Jupyter."""
    records = RecordStore(Path(out_dir) / RECORDS, value_fields=EVAL_FIELDS).read()
    return explorer.Explorer(explorer.eval_page(_eval_title(read_settings(out_dir)), eval_problems(records)))


def write_eval_report(out_dir, path=None, format: str = "html", examples: bool = True) -> Path:
    """The report of `out_dir` and, beside it, the explorer's view of every problem's completions
    (`eval_explorer_path`); `examples=False` leaves out the completions and the explorer (for
    summaries that are committed without raw model output)."""
    records = RecordStore(Path(out_dir) / RECORDS, value_fields=EVAL_FIELDS).read()
    frame = summary.records_frame(records)
    path = Path(path) if path else Path(out_dir) / f"report.{format}"
    settings = read_settings(out_dir)
    pairs = summary.paired_comparisons(frame)
    title = _eval_title(settings)
    sections = list(eval_sections(settings, frame, pairs, examples))
    if examples:
        explorer_path = explore_eval(out_dir).save(eval_explorer_path(path))
        sections.append(("Every completion beside its grade (open in a browser)", ["file"], [[explorer_path.name]]))
    return write_document(title, sections, eval_figures(frame, pairs), path, format)
