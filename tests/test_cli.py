"""The command line: a real run on the embedded model, and one clear line with exit code 2 on bad input."""

import json
import os
import re
from html.parser import HTMLParser

import pytest

from ppl_ecmh.cli import main


class TableParser(HTMLParser):
    """Counts what a reader sees in the report: tables, rows, headings and embedded images."""

    def __init__(self):
        super().__init__()
        self.tables, self.rows, self.images, self.headings, self._heading = 0, 0, [], [], False

    def handle_starttag(self, tag, attrs):
        self.tables += tag == "table"
        self.rows += tag == "tr"
        self._heading = tag == "h2"
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._heading:
            self.headings.append(data)
            self._heading = False


@pytest.mark.slow
def test_sample_then_report_on_the_embedded_model(smollm, capsys, tmp_path):
    run = tmp_path / "run.nc"
    code = main(["sample", "--prompt", "What is 2 + 2?", "--chains", "2", "--draws", "3", "--max-new-tokens", "8",
                 "--sampler", "entropy-cut", "--no-progress", "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0
    assert "best completion" in out and "r_hat" in out and "ess_bulk_per_1k_tokens" in out and run.is_file()
    assert "n/a: log_target ess_bulk: needs >= 10 draws per chain" in out  # 3 draws: no ESS, not a cap

    assert main(["report", str(run), "-o", str(tmp_path / "report.html")]) == 0
    assert f"chain explorer written to {tmp_path / 'report_explorer_entropy-cut.html'}" in capsys.readouterr().out
    page = (tmp_path / "report_explorer_entropy-cut.html").read_text()
    assert "<script src" not in page and "<link" not in page  # self-contained (tests/test_explorer.py opens it)
    parser = TableParser()
    parser.feed((tmp_path / "report.html").read_text())
    assert parser.tables >= 5 and parser.rows > 10
    assert len(parser.images) >= 4 and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert any("entropy profile" in h for h in parser.headings)
    from ppl_ecmh.analysis import diagnostics, plots

    saved = diagnostics.load(run)
    assert {"unkept_tokens", "unkept_entropy", "unkept_length", "piece_id", "piece_text"} <= set(saved.completions)
    figure = plots.entropy_profile(saved)
    assert figure.axes[0].get_title() == "entropy profile of chain 0, draw 2"  # the last of 3 draws

    assert main(["report", str(run), "-o", str(tmp_path / "report.md"), "--format", "md"]) == 0
    markdown = (tmp_path / "report.md").read_text()
    figures = list((tmp_path / "report_figures").glob("*.png"))
    assert len(figures) >= 4 and all(f"report_figures/{f.name}" in markdown for f in figures)


@pytest.mark.slow
def test_compare_prints_a_table_and_writes_runs_and_report(smollm, capsys, tmp_path):
    code = main(["compare", "--prompt", "Say hi.", "--samplers", "ancestral,random-cut", "--chains", "2",
                 "--draws", "6", "--token-budget", "30", "--max-new-tokens", "6", "--no-progress",
                 "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "ESS/1k tok" in out and "ancestral" in out and "random-cut" in out
    assert "n/a: random-cut ess_bulk_per_1k_tokens: needs >= 10 draws per chain" in out
    from ppl_ecmh.analysis import diagnostics

    for name in ("ancestral", "random-cut"):
        idata = diagnostics.load(tmp_path / f"{name}.nc")
        tokens, draws = diagnostics.total_tokens(idata), idata.posterior.sizes["draw"]
        # the budget stops the run at the first draw that reaches it (or at --draws)
        assert draws == 6 or tokens >= 30
        assert tokens - int(idata.sample_stats["num_generated"].values[:, -1].sum()) < 30 or draws == 1
    assert (tmp_path / "ancestral.nc").is_file() and (tmp_path / "random-cut.nc").is_file()
    parser = TableParser()
    parser.feed((tmp_path / "report.html").read_text())
    assert "kernel comparison" in parser.headings


@pytest.mark.slow
def test_eval_then_report_on_the_embedded_model(smollm, capsys, tmp_path):
    out = tmp_path / "humaneval"
    argv = ["eval", "--task", "humaneval", "--limit", "3", "--samplers", "ancestral,entropy-cut", "--seeds", "0,1",
            "--max-new-tokens", "12", "--mh-steps", "1", "--batch-size", "2", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tokens_vs_ancestral" in printed and "entropy-cut" in printed
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    passed = {sampler: sum(r["correct"] for r in records if r["sampler"] == sampler) for sampler in ("ancestral", "entropy-cut")}
    assert "passed per problem, over 2 seed(s)" in printed and "mean log p per token" in printed
    assert re.search(rf"\ball\s+{passed['ancestral']}/6\s+{passed['entropy-cut']}/6\b", printed), printed
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 3
    assert main(argv) == 0  # a finished run resumes to nothing new
    assert (out / "records.jsonl").read_text().splitlines() == lines

    assert main(["report", str(out)]) == 0
    assert str(out / "report_explorer.html") in capsys.readouterr().out
    page = (out / "report_explorer.html").read_text()
    assert page.count('"problem_id"') == 0 and page.count('"sampler":"entropy-cut"') == 2 * 3  # records by problem
    parser = TableParser()
    parser.feed((out / "report.html").read_text())
    assert any("Accuracy" in h for h in parser.headings) and any("pass@k" in h for h in parser.headings)
    assert any("Paired comparisons" in h for h in parser.headings) and len(parser.images) == 4  # accuracy, cost, pairs, pass@k


def test_eval_refuses_an_unknown_sampler_before_loading_anything(capsys, tmp_path):
    assert main(["eval", "--task", "gsm8k", "--samplers", "ancestral,nonsense", "--out", str(tmp_path)]) == 2
    assert "unknown sampler 'nonsense'" in capsys.readouterr().err


def test_report_of_a_missing_or_foreign_file_is_one_line(tmp_path, capsys):
    foreign = tmp_path / "foreign.nc"
    foreign.write_bytes(b"not netcdf")
    for path in ["/no/such/run.nc", str(foreign)]:
        assert main(["report", path, "-o", str(tmp_path / "r.html")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("ppl-ecmh: error:"), err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "--model", "no-such-model", "--prompt", "hi"], "no model 'no-such-model'"),
        (["sample", "--prompt", "hi", "--alpha", "0"], "alpha"),
        (["sample", "--prompt", "hi", "--tau", "-1"], "tau"),
        (["sample", "--prompt", "hi", "--sampler", "blockwise", "--block-size", "0"], "block_size"),
        (["sample", "--prompt", "hi", "--cut", "bogus", "--sampler", "entropy-cut"], "cut"),
        (["sample", "--prompt-file", "/no/such/prompt.txt"], "prompt-file"),
        (["sample", "--prompt", "", "--no-chat"], "prompt"),
        (["sample", "--prompt", "hi", "--max-new-tokens", "100000"], "context"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(argv, words, capsys, smollm):
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ppl-ecmh: error:") and words in err, err


def test_argument_errors_exit_with_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--prompt", "hi", "--sampler", "nonsense"])
    assert exit_info.value.code == 2


def test_an_argument_error_is_one_line_and_a_hint(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--prompt", "hi", "--sampler", "nonsense"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "invalid choice: 'nonsense'" in err[0] and "--help" in err[1], err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "--prompt", "hi", "--alpha", "1e308"], "alpha"),
        (["sample", "--prompt", "hi", "--sampler", "ancestral", "--tau", "-1"], "tau"),
        (["sample", "--prompt", "hi", "--chains", "0"], "chains"),
        (["sample", "--prompt", "hi", "--draws", "-1"], "draws"),
        (["sample", "--prompt", "hi", "--out", "/no/such/folder/run.nc"], "no folder"),
        (["compare", "--prompt", "hi", "--batch-size", "0"], "batch_size"),
        (["eval", "--task", "humaneval", "--problems", "HumanEval/2,HumanEval/999", "--out", "{tmp}"],
         "no problem HumanEval/999"),
    ],
)
def test_bad_input_is_refused_before_a_model_loads(argv, words, capsys, no_model_load, tmp_path):
    assert main([arg.format(tmp=tmp_path / "out") for arg in argv] + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("record, problem", [
    ('{"sampler": "a", "seed": 0, "problem_id": "p"}', "(a, 0, p) lacks `correct`"),  # not an eval record
    ('{"sampler": "a", "seed": 0, "problem_id": "p", "correct": "yes", "tokens_generated": 3, "completion_length": 3, '
     '"alpha_log_p": -2.0, "wall_time_s": 1.0, "acceptance": 1.0}', "(a, 0, p) has `correct` = 'yes', not a bool"),
    ('{"sampler": "a", "seed": 0, "problem_id": "p", "correct": true, "tokens_generated": 3, "wall_time_s": 1.0, '
     '"acceptance": 1.0}', "(a, 0, p) lacks `completion_length`"),  # what the report's length table reads
])
def test_report_of_a_directory_with_a_damaged_record_names_it_in_one_line(record, problem, tmp_path, capsys):
    """One intact record and one damaged: the report names the damaged one and its field, exit 2,
    rather than summarise what it can read (an accuracy of 1 with an interval of 0.30-0.95)."""
    from ppl_ecmh.evaluation import EvalSettings
    from ppl_ecmh.evaluation.store import write_settings

    write_settings(tmp_path, EvalSettings(task="gsm8k"))
    intact = ('{"sampler": "a", "seed": 0, "problem_id": "q", "correct": true, "tokens_generated": 3, '
              '"completion_length": 3, "alpha_log_p": -2.0, "wall_time_s": 1.0, "acceptance": 1.0}')
    (tmp_path / "records.jsonl").write_text(f"{intact}\n{record}\n{intact.replace('q', 'r')}\n")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"records.jsonl:2: the record {problem}" in err, err


def test_the_cli_keeps_compiled_programs_in_the_users_cache_unless_told_not_to(tmp_path, monkeypatch):
    import jax

    from ppl_ecmh.cli import use_compilation_cache

    updates = []
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")  # the test run's own cache (conftest)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PPL_ECMH_COMPILATION_CACHE", "0")
    use_compilation_cache()
    assert not updates and "JAX_COMPILATION_CACHE_DIR" not in os.environ
    monkeypatch.delenv("PPL_ECMH_COMPILATION_CACHE")
    use_compilation_cache()
    expected = str(tmp_path / "ppl-ecmh" / "jax")
    assert updates == [("jax_compilation_cache_dir", expected)] and os.environ["JAX_COMPILATION_CACHE_DIR"] == expected
    updates.clear()
    use_compilation_cache()  # a directory the user chose is left alone
    assert not updates
