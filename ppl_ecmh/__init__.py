"""ppl-ecmh: sampling from the power distribution p(x)^alpha of a language model with
Metropolis-Hastings (random-cut and entropy-cut suffix resampling), and diagnosing the chains."""

from ppl_ecmh.analysis.explorer import explore
from ppl_ecmh.errors import (
    CorruptCheckpointError,
    ModelNotFoundError,
    PplEcmhError,
    PromptTooLongError,
    UnsupportedModelError,
)
from ppl_ecmh.lm import EMBEDDED_MODELS, LoadedModel, load_model
from ppl_ecmh.numpyro.kernels import (
    AncestralSampler,
    BlockwiseMH,
    EntropyCutMH,
    LowTemperatureSampler,
    RandomCutMH,
    SuffixMH,
)
from ppl_ecmh.numpyro.target import LanguageModelSequence, power_model, sharpen
from ppl_ecmh.registry import SAMPLERS, SamplerSpec
from ppl_ecmh.runner import RECORDED_FIELDS, run_of_mcmc
from ppl_ecmh.samplers.cuts import Entropy, EntropyJump, Mixture, Uniform, get_cut

__all__ = [
    "EMBEDDED_MODELS",
    "AncestralSampler",
    "BlockwiseMH",
    "CorruptCheckpointError",
    "Entropy",
    "EntropyCutMH",
    "EntropyJump",
    "LanguageModelSequence",
    "LoadedModel",
    "LowTemperatureSampler",
    "Mixture",
    "ModelNotFoundError",
    "PplEcmhError",
    "PromptTooLongError",
    "RECORDED_FIELDS",
    "RandomCutMH",
    "SAMPLERS",
    "SamplerSpec",
    "SuffixMH",
    "Uniform",
    "UnsupportedModelError",
    "explore",
    "get_cut",
    "load_model",
    "power_model",
    "run_of_mcmc",
    "sharpen",
]
