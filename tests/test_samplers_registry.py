"""The sampler registry: every sampler is one record, and no code outside it decides by a sampler's name."""

import ast
from pathlib import Path

import pytest

import ppl_ecmh
from ppl_ecmh.engine import Schedule
from ppl_ecmh.registry import ENGINE, POPULATION, REGISTRY, SAMPLERS, SamplerSpec, get_sampler

PACKAGE = Path(ppl_ecmh.__file__).parent


def name_decisions(source: str) -> list[str]:
    """Places in `source` that decide by a sampler's name: a comparison with a name (`==`, `in`),
    membership in a literal collection of names, a dict keyed by names, or a collection of two or
    more names (a name list kept beside the registry). A name as a default or as data is none."""
    names, found = set(SAMPLERS), []

    def named(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in names

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literal = [element for operand in operands if isinstance(operand, (ast.Tuple, ast.List, ast.Set))
                       for element in operand.elts]
            if any(named(operand) for operand in operands + literal):
                found.append(f"line {node.lineno}: a comparison with a sampler's name")
        elif isinstance(node, ast.Dict) and any(named(key) for key in node.keys):
            found.append(f"line {node.lineno}: a dict keyed by sampler names")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and sum(named(e) for e in node.elts) >= 2:
            found.append(f"line {node.lineno}: a collection of sampler names")
    return found


def test_no_module_outside_the_registry_decides_by_a_samplers_name():
    decisions = {str(path.relative_to(PACKAGE)): found for path in sorted(PACKAGE.rglob("*.py"))
                 if path.name != "registry.py" and (found := name_decisions(path.read_text()))}
    assert decisions == {}


@pytest.mark.parametrize("code", [
    'if spec.name == "best-of-n":\n    pass',
    'if sampler in ("power-smc", "tmc"):\n    pass',
    'rows = {"power-smc": 16}.get(sampler, 1)',
    'MH_SAMPLERS = ("ecmh", "entropy-cut")',
])
def test_the_scan_finds_each_kind_of_decision_by_name(code):
    assert name_decisions(code)


def test_a_name_as_a_default_or_as_data_is_not_a_decision():
    assert not name_decisions('def table(frame, reference="ancestral"):\n    pass\nRecipe("x", "ECMH", "humaneval", "ecmh")')


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_builds_its_kernel_and_its_engine_schedule_or_population_rows(name):
    spec = SamplerSpec(name, bon_budget=64)
    sampler = spec.sampler
    assert sampler is get_sampler(name) and sampler.runs_on in (ENGINE, POPULATION)
    assert spec.make_kernel() is not None
    if sampler.runs_on == ENGINE:
        assert isinstance(spec.schedule(4.0, 32, 3), Schedule)
    else:
        assert not hasattr(spec.make_kernel(), "schedule") and sampler.rows(spec) > 1
    assert set(sampler.options) <= set(SamplerSpec.__dataclass_fields__)


def test_a_preset_fixes_its_cut_whatever_was_asked():
    assert SamplerSpec("ecmh", cut="uniform").make_cut() == SamplerSpec("blockwise", cut="entropy_jump",
                                                                        cut_params=(("power", 4.0),)).make_cut()
    assert repr(SamplerSpec("karan-du", cut="entropy").make_cut()) == "Uniform()"


def test_an_unknown_sampler_is_one_error_naming_the_choices():
    with pytest.raises(ValueError, match="unknown sampler 'mala'; choose from ancestral, low-temp"):
        SamplerSpec("mala")


# What each run records of its sampler's own settings (unchanged by the registry).
RECORDED = {
    "ancestral": {}, "low-temp": {}, "random-cut": {}, "entropy-cut": {},
    "blockwise": dict(block_size=192, num_mcmc_steps=10), "karan-du": dict(block_size=192, num_mcmc_steps=10),
    "ecmh": dict(block_size=192, num_mcmc_steps=10), "power-smc": dict(num_particles=16, smc_block_size=1),
    "tmc": dict(num_candidates=4, num_rollouts=4, horizon=8), "best-of-n": dict(bon_budget=64),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_run_records_the_options_its_sampler_reads(name):
    spec = SamplerSpec(name, bon_budget=64)
    preset = name if REGISTRY[name].preset else None
    assert spec.recorded_settings(None) == dict(preset=preset, top_k=None) | RECORDED[name]


def test_every_sampler_option_has_one_spelling_from_the_command_line_to_the_stored_settings():
    """A flag per SamplerOptions field, named after it; what the flags give reaches the spec and the
    evaluation's settings under the same names. The older flags are aliases of the same option."""
    import dataclasses

    from ppl_ecmh.cli import _sampler_options, build_parser
    from ppl_ecmh.evaluation import EvalSettings
    from ppl_ecmh.registry import SamplerOptions

    given = dict(tau=0.5, cut="entropy", block_size=7, num_mcmc_steps=3, top_k=5, num_particles=6, smc_block_size=2,
                 bon_budget=99, num_candidates=3, num_rollouts=2, horizon=4)
    argv = ["eval", "--task", "gsm8k", "--out", "x", "--cut-param", "beta=2"]
    argv += [item for name, value in given.items() for item in (f"--{name.replace('_', '-')}", str(value))]
    options = _sampler_options(build_parser().parse_args(argv))
    assert options == given | dict(cut_params=[("beta", 2.0)])
    assert set(options) == {field.name for field in dataclasses.fields(SamplerOptions)}
    settings = EvalSettings(task="gsm8k", **options)
    spec = settings.spec("entropy-cut")
    assert all(getattr(spec, name) == getattr(settings, name) == value for name, value in given.items())
    assert spec.cut_params == settings.cut_params == (("beta", 2.0),)
    older = ["eval", "--task", "gsm8k", "--out", "x", "--mcmc-steps", "3", "--particles", "6", "--candidates", "3",
             "--rollouts", "2"]
    assert {name: value for name, value in _sampler_options(build_parser().parse_args(older)).items()
            if name in ("num_mcmc_steps", "num_particles", "num_candidates", "num_rollouts")} == dict(
        num_mcmc_steps=3, num_particles=6, num_candidates=3, num_rollouts=2)
