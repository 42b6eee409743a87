"""ppl-ecmh: sampling from the power distribution p(x)^alpha of a language model with
Metropolis-Hastings (random-cut and entropy-cut suffix resampling), and diagnosing the chains."""

from ppl_ecmh.errors import (
    CorruptCheckpointError,
    ModelNotFoundError,
    PplEcmhError,
    PromptTooLongError,
    UnsupportedModelError,
)
from ppl_ecmh.lm import EMBEDDED_MODELS, LoadedModel, load_model

__all__ = [
    "EMBEDDED_MODELS",
    "CorruptCheckpointError",
    "LoadedModel",
    "ModelNotFoundError",
    "PplEcmhError",
    "PromptTooLongError",
    "UnsupportedModelError",
    "load_model",
]
