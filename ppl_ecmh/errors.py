"""Exceptions raised by ppl-ecmh for bad input, so callers (and the CLI) can tell them apart."""


class PplEcmhError(Exception):
    """Base class of every error the package raises on purpose."""


class ModelNotFoundError(PplEcmhError, FileNotFoundError):
    """An unknown model name, a missing path, or an embedded model whose package is not installed."""


class CorruptCheckpointError(PplEcmhError, ValueError):
    """A checkpoint file that cannot be read: truncated, corrupt, or missing tensors."""


class UnsupportedModelError(PplEcmhError, ValueError):
    """An architecture, rope scaling or quantization type this runtime does not implement."""


class PromptTooLongError(PplEcmhError, ValueError):
    """A prompt (plus the requested completion length) that does not fit the model's context."""
