"""Shared fixtures: the embedded model (skipped with a clear reason if it is not installed)."""

import atexit
import os
import shutil
import tempfile

# One persistent compilation cache for the whole run, set before JAX is imported: a program
# compiled again (after `jax.clear_caches()` below, by a fresh `jax.jit` of the same function, in a
# notebook's kernel or in a Ray actor, which inherit the variable) is read from disk instead.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ppl-ecmh-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Each program XLA compiles for the CPU keeps memory mappings of its code. The whole suite
# compiles enough of them to pass Linux's limit of 65,530 mappings per process
# (vm.max_map_count), and the next compilation then dies inside XLA (a segmentation fault or an
# abort; seen after about 150 tests, 47,000 mappings at 40% of the suite). One module adds up to
# about 30,000 (more where the engine narrows wide batches through every width), so compiled
# programs are dropped after a module that leaves more than MODULE_BUDGET mappings, and after any
# test that leaves more than TEST_BUDGET.
MODULE_BUDGET, TEST_BUDGET = 20_000, 40_000


def _memory_mappings() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # no /proc: count every module as over budget
        return MODULE_BUDGET + 1


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drop every compiled program after a test module that leaves the process near the limit
    on memory mappings (above); below it, programs stay shared between modules."""
    yield
    if _memory_mappings() > MODULE_BUDGET:
        jax.clear_caches()


@pytest.fixture(autouse=True)
def release_compiled_programs_within_a_module():
    """The same within a module that compiles more than the module budget allows for."""
    yield
    if _memory_mappings() > TEST_BUDGET:
        jax.clear_caches()


@pytest.fixture(scope="session")
def smollm():
    from ppl_ecmh import ModelNotFoundError, load_model

    try:
        return load_model("smollm2-135m")
    except ModelNotFoundError as error:
        pytest.skip(str(error))


# The exactness verdicts travel on each test's report (as plain numbers), so the summary below
# sees them whether the test ran in this process or in a pytest-xdist worker.
VERDICT_PROPERTY = "exactness verdict"
SESSION_VERDICTS: dict[str, tuple[str, list]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if call.when != "call":
        return
    from tests.exact import VERDICTS

    for key in [key for key in VERDICTS if key.split(" ")[0] == item.nodeid]:
        expected, comparisons = VERDICTS.pop(key)
        rows = [(float(c.tv), float(c.tv_bound), float(c.chi2_pvalue)) for c in comparisons]
        report.user_properties.append((VERDICT_PROPERTY, (key, expected, rows)))


def pytest_runtest_logreport(report):
    for name, value in report.user_properties:
        if name == VERDICT_PROPERTY:
            key, expected, rows = value
            SESSION_VERDICTS[key] = (expected, rows)


def pytest_terminal_summary(terminalreporter):
    """The exactness verdicts at every seed: TV against its bound (tests/exact.py)."""
    if not SESSION_VERDICTS:
        return
    terminalreporter.section("exactness verdicts: TV / bound at each seed")
    for test, (expected, rows) in sorted(SESSION_VERDICTS.items()):
        ratios = " ".join(f"{tv / bound:5.2f}" for tv, bound, _ in rows)
        pvalues = [p for _, _, p in rows]
        worst = min(pvalues) if expected == "consistent" else max(pvalues)
        terminalreporter.write_line(f"{expected:>10}  {ratios}  chi2 p {'min' if expected == 'consistent' else 'max'} "
                                    f"{worst:.2g}  {test}")


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything loads a model: the command line's own binding and the one an
    evaluation imports when it runs."""
    import ppl_ecmh.cli
    import ppl_ecmh.lm

    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded")

    monkeypatch.setattr(ppl_ecmh.cli, "load_model", refuse)
    monkeypatch.setattr(ppl_ecmh.lm, "load_model", refuse)
