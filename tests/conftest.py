"""Shared fixtures: the embedded model (skipped with a clear reason if it is not installed)."""

import os

import jax
import pytest

jax.config.update("jax_enable_x64", False)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drop every compiled program after each test module. Each program XLA compiles for the CPU
    keeps memory mappings of its code; the whole suite compiles enough of them to pass Linux's
    limit of 65,530 mappings per process (vm.max_map_count), and the next compilation then dies
    with a segmentation fault inside XLA (seen after about 150 tests, 47,000 mappings at 40% of
    the suite). Programs are not shared across modules, so little is recompiled."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="session")
def smollm():
    from ppl_ecmh import ModelNotFoundError, load_model

    try:
        return load_model("smollm2-135m")
    except ModelNotFoundError as error:
        pytest.skip(str(error))


def pytest_terminal_summary(terminalreporter):
    """The exactness verdicts at every seed: TV against its bound (tests/exact.py)."""
    from tests.exact import VERDICTS

    if not VERDICTS:
        return
    terminalreporter.section("exactness verdicts: TV / bound at each seed")
    for test, (expected, comparisons) in sorted(VERDICTS.items()):
        ratios = " ".join(f"{c.tv / c.tv_bound:5.2f}" for c in comparisons)
        worst = min(c.chi2_pvalue for c in comparisons) if expected == "consistent" else max(c.chi2_pvalue for c in comparisons)
        terminalreporter.write_line(f"{expected:>10}  {ratios}  chi2 p {'min' if expected == 'consistent' else 'max'} "
                                    f"{worst:.2g}  {test}")
