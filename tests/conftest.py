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
