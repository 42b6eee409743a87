"""`eval --ray` on a real local Ray cluster: the store a Ray run writes equals a single-process
run's (log p to float rounding), every record once, also when an actor is killed mid-unit."""

import dataclasses
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ppl_ecmh.cli import main  # noqa: E402
from ppl_ecmh.evaluation import EvalSettings, RecordStore, run_eval  # noqa: E402
from ppl_ecmh.evaluation.distributed import Unit, plan_units, run_eval_on_ray  # noqa: E402
from ppl_ecmh.evaluation.experiment import pending_work  # noqa: E402
from ppl_ecmh.registry import SamplerSpec  # noqa: E402

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"
needs_data = pytest.mark.skipif(not GSM8K.is_file(), reason="../shared/data is not beside the project")
SAMPLERS, SEEDS = ["ancestral", "power-smc"], [0]  # an engine sampler and a lockstep one
DRAW_FIELDS = ("completion", "answer", "correct", "tokens_generated", "completion_length", "acceptance")


def settings() -> EvalSettings:
    return EvalSettings(task="gsm8k", source=str(GSM8K), limit=5, max_new_tokens=6, mh_steps=1, num_particles=2,
                        batch_size=4)


def draws(records) -> dict:
    return {(r["sampler"], r["seed"], r["problem_id"]): tuple(r[f] for f in DRAW_FIELDS) for r in records}


def log_p(records) -> dict:
    return {(r["sampler"], r["seed"], r["problem_id"]): r["alpha_log_p"] for r in records}


def test_an_unreachable_cluster_is_one_line_and_exit_2(tmp_path, capsys, no_model_load):
    """Run before the local cluster of the tests below starts: Ray connects once per process."""
    code = main(["eval", "--task", "gsm8k", "--source", str(GSM8K), "--limit", "1", "--out", str(tmp_path / "out"),
                 "--ray", "127.0.0.1:1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--ray 127.0.0.1:1: cannot connect" in err[0], err
    assert not RecordStore(tmp_path / "out" / "records.jsonl").read()


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_units_are_the_single_process_batches():
    """Engine samplers in chunks of the slot count; lockstep ones in the single process's batches."""
    work = [(SamplerSpec("ecmh"), 0, list("abcdefghij")), (SamplerSpec("power-smc"), 1, list("abcde"))]
    units = plan_units(dataclasses.replace(settings(), batch_size=4), work)  # power-smc: 4 // 2 = 2 per batch
    assert units == [Unit("ecmh", 0, tuple("abcd")), Unit("ecmh", 0, tuple("efgh")), Unit("ecmh", 0, tuple("ij")),
                     Unit("power-smc", 1, tuple("ab")), Unit("power-smc", 1, tuple("cd")), Unit("power-smc", 1, ("e",))]


@pytest.mark.slow
@needs_data
def test_a_ray_run_with_a_killed_actor_writes_the_single_process_store(local_cluster, tmp_path, smollm):
    single = run_eval(settings(), SAMPLERS, SEEDS, tmp_path / "single", progress=False, model=smollm).read()

    killed = []

    def kill_the_first_worker_mid_unit(actor, unit):
        if not killed:
            killed.append(unit)
            ray.kill(actor, no_restart=True)

    store = run_eval_on_ray(settings(), SAMPLERS, SEEDS, tmp_path / "ray", workers=2, progress=False,
                            on_dispatch=kill_the_first_worker_mid_unit)
    records = store.read()
    assert killed
    keys = [(r["sampler"], r["seed"], r["problem_id"]) for r in records]
    assert len(keys) == len(set(keys)) == len(SAMPLERS) * 5  # every record exactly once
    assert draws(records) == draws(single)  # the same completions, grades, costs and decisions
    # log p to float rounding: a transformer's rounding depends on the slot a chain ran in
    assert log_p(records) == pytest.approx(log_p(single), rel=1e-5)
    # resumed: nothing left to do, nothing written twice
    again = run_eval_on_ray(settings(), SAMPLERS, SEEDS, tmp_path / "ray", workers=2, progress=False).read()
    assert again == records


def test_work_is_planned_from_what_the_store_lacks():
    class Problem:
        def __init__(self, id):
            self.id = id

    spec = type("Spec", (), {"name": "ancestral"})()
    work = pending_work([spec], [0, 1], [Problem("a"), Problem("b")], done={("ancestral", 0, "a")})
    assert [(seed, pending) for _, seed, pending in work] == [(0, ["b"]), (1, ["a", "b"])]
