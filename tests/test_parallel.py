"""Every device of a host (DESIGN section 8): the engine on data- and tensor-parallel meshes of
forced host devices draws what it draws on one device, and bad device options fail before a load."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppl_ecmh.cli import main

ROOT = Path(__file__).resolve().parent.parent


def forced_devices(count: int) -> dict:
    return os.environ | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_draws_on_data_and_tensor_parallel_meshes_equal_the_single_device_draws():
    """Data parallel: bit-identical records. Tensor parallel: the all-reduce sums in another order,
    so log p agrees to float32 rounding and every token and accept/reject decision is the same."""
    done = subprocess.run([sys.executable, "-m", "tests.parallel_check"], cwd=ROOT, env=forced_devices(4),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4 and len(report["lengths"]) > 2  # chains end at several lengths
    assert report["data 4"] == {"tokens_equal": True, "decisions_equal": True, "log_target_max_diff": 0.0}
    for name in ("data 2 x model 2", "model 2"):
        assert report[name]["tokens_equal"] and report[name]["decisions_equal"], report[name]
        assert report[name]["log_target_max_diff"] < 1e-3, report[name]
    assert report["placement"] == {"tokens": ["data"], "cache": ["data", "model"], "wq": ["model"],
                                   "wo": ["None", "model"], "embed": []}


@pytest.mark.parametrize("argv, message", [
    (["--devices", "8"], "devices: 8 asked for, this host has 1"),
    (["--tensor-parallel", "2"], "tensor_parallel: must divide the 1 devices"),
    (["--devices", "0"], "devices: 0 asked for"),
])
def test_impossible_device_options_fail_in_one_line_before_the_model_loads(argv, message, capsys, no_model_load):
    assert main(["sample", "--prompt", "hi", "--no-progress"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.slow
def test_a_tensor_parallel_degree_that_does_not_divide_the_heads_is_refused_before_loading():
    """SmolLM2-135M has 9 heads and 3 key/value heads: 2 does not divide them."""
    done = subprocess.run([sys.executable, "-m", "ppl_ecmh.cli", "sample", "--prompt", "hi", "--devices", "2",
                           "--tensor-parallel", "2"], cwd=ROOT, env=forced_devices(2), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ppl-ecmh: error: tensor_parallel: 2 does not divide the model's num_heads (9)"]
