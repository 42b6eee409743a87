"""The accelerator check runs here too, at a toy shape, so it cannot rot before a GPU is lent."""

import json

import pytest

from benchmarks import accelerator


def test_the_accelerator_check_runs_at_a_tiny_shape_and_writes_every_figure(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "accelerator.json"
    accelerator.main(["--tiny", "--json", str(path)])
    results = json.loads(path.read_text())
    assert results["errors"] == {} and results["skipped"] == []
    (figures,) = results["shapes"]
    assert figures["shape"] == "tiny" and figures["parameters"] > 0
    for width in map(str, accelerator.TINY["widths"]):
        assert figures["decode"][width]["tokens_per_s"] > 0
        assert figures["reference"][width]["tokens_per_s"] > 0
    engine = figures["engine"]
    assert engine["iterations"] == accelerator.TINY["engine_iterations"]
    assert 0 < engine["occupancy"] <= 1 and engine["useful_tokens_per_s"] > 0 and engine["ratio_to_raw"] > 0
    late = figures["decode_late"]
    assert late["prompt"] == accelerator.TINY["late_prompt"]
    assert [[start["span"] is None for start in late[attention]] for attention in ("dynamic", "static")] == [
        [True, True], [False, False]]
    assert all(start["tokens_per_s"] > 0 for attention in ("dynamic", "static") for start in late[attention])
    # where the time goes: both profiles read back, with the ops that ran
    for profile in figures["decode"][str(accelerator.TINY["chains"])]["profile"], engine["profile"]:
        assert profile["op_runs"] > 0 and profile["busy_s"] > 0 and profile["wall_s"] > 0 and profile["steps"] > 0
        assert profile["top"] and all(top["runs"] > 0 for top in profile["top"])


def test_a_failed_measurement_is_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(accelerator, "reference_model", broken)
    path = tmp_path / "accelerator.json"
    results = accelerator.main(["--tiny", "--json", str(path)])
    assert json.loads(path.read_text())["errors"] == results["errors"] == {
        "tiny: reference model": "RuntimeError: out of memory"}
    (figures,) = results["shapes"]
    assert set(figures["reference"].values()) == {None}
    assert figures["decode"][1]["tokens_per_s"] > 0 and figures["engine"]["occupancy"] > 0


def test_a_profiler_that_fails_costs_the_profile_alone(monkeypatch):
    def refused(trace_dir):
        raise RuntimeError("CUPTI_ERROR_INSUFFICIENT_PRIVILEGES")

    monkeypatch.setattr(accelerator, "kernel_summary", refused)
    results = accelerator.main(["--tiny"])
    assert results["errors"] == {}
    (figures,) = results["shapes"]
    for entry in figures["decode"][accelerator.TINY["chains"]], figures["engine"]:
        assert entry["profile"]["error"] == "RuntimeError: CUPTI_ERROR_INSUFFICIENT_PRIVILEGES"
    assert figures["decode"][accelerator.TINY["chains"]]["tokens_per_s"] > 0 and figures["engine"]["occupancy"] > 0


def test_past_the_deadline_nothing_starts_and_the_file_says_so(tmp_path):
    path = tmp_path / "accelerator.json"
    accelerator.main(["--tiny", "--json", str(path), "--deadline-s", "0"])
    results = json.loads(path.read_text())
    assert results["skipped"] == ["tiny: reference model", "tiny: random weights"]
    assert results["shapes"][0]["parameters"] is None and results["shapes"][0]["engine"] is None


def test_each_measurement_finds_the_ones_before_it_on_disk(tmp_path, monkeypatch):
    """A run cut off by its lease keeps what it finished."""
    path = tmp_path / "accelerator.json"
    seen = []
    decode_figures = accelerator.decode_figures

    def watched(lm, width, settings):
        seen.append(json.loads(path.read_text())["shapes"][0]["decode"])
        return decode_figures(lm, width, settings)

    monkeypatch.setattr(accelerator, "decode_figures", watched)
    accelerator.main(["--tiny", "--json", str(path)])
    assert seen[0] == {} and list(seen[1]) == ["1"]


def test_the_paper_shapes_are_qwen_s():
    seven, math = accelerator.SHAPES["qwen2.5-7b"], accelerator.SHAPES["qwen2.5-math-1.5b"]
    assert (seven.num_layers, seven.hidden_size, seven.num_heads, seven.num_kv_heads) == (28, 3584, 28, 4)
    assert (math.num_layers, math.hidden_size, math.num_heads, math.num_kv_heads) == (28, 1536, 12, 2)
    assert accelerator.PAPER["max_new_tokens"] == 3072 and accelerator.PAPER["widths"] == (1, 16, 64, 256)
