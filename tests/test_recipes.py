"""Published recipes, the memory plan and the model list from the command line: the docs' recipe
table is what `--recipe` applies, explicit options win and are recorded, and every mistake is
one line and exit 2 before any model loads."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from ppl_ecmh import cli
from ppl_ecmh.evaluation.recipes import PUBLISHED_TOP_K, RECIPES

DOCS = Path(__file__).parents[1] / "docs" / "reproducing.md"


def docs_table() -> dict:
    rows = [line.split("|")[1:-1] for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    return {re.sub("`", "", cells[0]).strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


def applied(argv):
    args = cli.build_parser().parse_args(argv)
    args.argv = argv
    cli._apply_recipe(args, cli._explicit(args))
    return args


def test_the_docs_table_is_what_each_recipe_applies():
    table = docs_table()
    assert set(table) == set(RECIPES)
    for name, (paper, task, sampler, alpha, t_max, block, steps, tau, cut, tokens) in table.items():
        args = applied(["eval", "--recipe", name, "--out", "x"])
        recipe = RECIPES[name]
        assert (paper, task, sampler) == (recipe.paper, args.task, args.samplers)
        assert (float(alpha), int(t_max), int(block), int(steps)) == (
            args.alpha, args.max_new_tokens, args.block_size, args.num_mcmc_steps)
        assert tau == "1/α" and args.tau is None and args.top_k is None and args.stretch_context
        assert cut == ("entropy jump, β 4" if sampler == "ecmh" else "uniform")
        assert int(tokens.replace(",", "")) == recipe.decoded_tokens_bound()


def test_explicit_options_override_a_recipe_and_are_recorded(tmp_path):
    args = applied(["eval", "--recipe", "ecmh-humaneval", "--max-new-tokens=96", "--samplers", "ancestral",
                    "--model", "Qwen/Qwen2.5-Math-7B", "--as-published", "--out", "x"])
    assert (args.max_new_tokens, args.samplers, args.alpha, args.top_k) == (96, "ancestral", 5.0, PUBLISHED_TOP_K)
    assert args.chat is False  # a base model: the plain prompt
    assert args.overrides == ["max_new_tokens", "samplers"]
    assert applied(["eval", "--recipe", "ecmh-math500", "--model", "microsoft/Phi-4-mini-instruct",
                    "--out", "x"]).chat is True


@pytest.mark.parametrize("argv, message", [
    (["eval", "--out", "x"], "--task or --recipe"),
    (["eval", "--task", "gsm8k", "--as-published", "--out", "x"], "--as-published needs a --recipe"),
    (["eval", "--recipe", "ecmh-math500", "--task", "gsm8k", "--out", "x"], "is for math500"),
    (["plan", "--model", "Qwen/Qwen2.5-7B", "--batch-size", "256"], "the widest that does is 64"),
    (["plan", "--model", "deepseek-ai/deepseek-math-7b-base", "--dtype", "float32", "--device-gb", "16"],
     "not even with one slot"),
    (["plan", "--model", "org/not-in-the-catalog"], "download it first"),
    (["plan", "--model", "Qwen/Qwen2.5-7B", "--draws", "0"], "draws: must be an integer >= 1"),
])
def test_mistakes_are_one_line_and_exit_2_before_a_model_loads(argv, message, capsys, no_model_load):
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and message in error


def test_plan_prints_the_memory_of_a_papers_model_offline(capsys):
    assert cli.main(["plan", "--model", "Qwen/Qwen2.5-Math-7B", "--recipe", "ecmh-aime"]) == 0
    out = capsys.readouterr().out
    assert "6656 positions, RoPE yarn" in out and "widest power of two that fits: 64 slots" in out


def test_plan_counts_the_draws_a_chain_keeps(capsys):
    """A recipe keeps one draw per block; a chain that keeps thousands of long draws narrows the width."""
    assert cli.main(["plan", "--model", "Qwen/Qwen2.5-Math-7B", "--recipe", "ecmh-math500"]) == 0
    assert "16 kept draws per chain" in capsys.readouterr().out
    assert cli.main(["plan", "--model", "Qwen/Qwen2.5-Math-7B", "--max-new-tokens", "3072", "--draws", "20000"]) == 0
    assert "widest power of two that fits: 32 slots" in capsys.readouterr().out


def test_models_lists_the_papers_models_with_what_fits(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for hub_id in ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-Math-7B", "Qwen/Qwen3-8B-Base", "microsoft/Phi-3.5-mini-instruct",
                   "microsoft/Phi-4-mini-instruct", "deepseek-ai/deepseek-math-7b-base"):
        assert hub_id in out
    assert re.search(r"Qwen/Qwen3-8B-Base\s+qwen3\s+8\.19B\s+16\.4\s+147,456\s+32\s+16\s+64\s+32", out)


def test_a_recipe_and_the_rope_scaling_are_stored_in_the_results_settings(tmp_path):
    from ppl_ecmh.evaluation import EvalSettings
    from ppl_ecmh.evaluation.store import check_settings, write_settings

    settings = EvalSettings(task="math500", recipe="ecmh-math500", overrides=["max_new_tokens"], stretch_context=True)
    yarn = dict(factor=1.625, original_max_position_embeddings=4096, rope_type="yarn")
    write_settings(tmp_path, settings, rope_scaling=yarn)
    check_settings(tmp_path, dataclasses.replace(settings, recipe=None, overrides=None))  # same law: resumable
    stored = json.loads((tmp_path / "settings.json").read_text())
    assert stored["recipe"] == "ecmh-math500" and stored["overrides"] == ["max_new_tokens"]
    assert stored["rope_scaling"] == yarn and stored["stretch_context"] is True
