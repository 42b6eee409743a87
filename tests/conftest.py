"""Shared fixtures: the embedded model (skipped with a clear reason if it is not installed)."""

import os

import jax
import pytest

jax.config.update("jax_enable_x64", False)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
