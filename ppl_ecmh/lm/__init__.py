"""Language models in JAX: the decoder, checkpoint loading, tokenizers, and enumerable toy models."""

from ppl_ecmh.lm.loading import LoadedModel, load_model, model_config
from ppl_ecmh.lm.registry import EMBEDDED_MODELS
from ppl_ecmh.lm.transformer import Transformer

__all__ = ["EMBEDDED_MODELS", "LoadedModel", "Transformer", "load_model", "model_config"]
