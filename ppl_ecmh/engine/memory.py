"""The engine's device memory, known before any weight is loaded or any program compiled.

A run's peak is the larger of its two compiled programs, each holding the weights and the slots
(every slot has a working cache and a backup, `slots.py`):

- admission prefills up to `ADMISSION_ROWS` prompts at once into a fresh cache of those rows,
  then scatters it into the slots: a cache of those rows, plus the prompt block's activations;
- the decode loop: one position per slot, so its temporaries are a step's activations, the
  attention chunk's scores and the logits with the sampler's work on them.

The drain's narrowing copies the caches one layer's array at a time and frees each wide one as it
goes (`scheduler.narrowed`), so it adds one array, not counted here.

`plan` adds them up from the config alone (so `ppl-ecmh plan` and the default width need no
download), per device: the data-parallel devices split the slots, the tensor-parallel ones the
weights' matrices and the caches' KV heads. tests/test_memory.py and benchmarks/gpu_compile.py
hold it against what XLA's buffer assignment reports (`compiled.memory_analysis()`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax

from ppl_ecmh.engine.scheduler import ADMISSION_ROWS
from ppl_ecmh.errors import PplEcmhError
from ppl_ecmh.lm.config import ModelConfig
from ppl_ecmh.lm.transformer import ATTENTION_CHUNK

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
MARGIN = 0.9  # of a device's memory a default width may plan to fill: XLA's runtime and fragmentation need the rest
DRAW_RECORD_BYTES = 64  # a draw's statistics (`slots.Tally`, length, log target) and its step's record
GB = 1e9


def _parameters(config: ModelConfig) -> tuple[int, int]:
    """The decoder's weights counted from its config: (those every tensor-parallel device holds
    whole: embeddings, once when tied, and norms; those it splits: the layers' projections and
    biases, `parallel._SPLIT_ROWS` and `_SPLIT_COLUMNS`)."""
    d, q, kv = config.hidden_size, config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    split = config.num_layers * (d * (2 * q + 2 * kv) + 3 * d * config.intermediate_size
                                 + (q + 2 * kv) * config.attention_bias)
    norms = config.num_layers * (2 * d + 2 * config.head_dim * config.qk_norm) + d
    return config.vocab_size * d * (1 if config.tie_word_embeddings else 2) + norms, split


def parameter_count(config: ModelConfig) -> int:
    """The decoder's weights, counted from its config (embeddings once when tied)."""
    return sum(_parameters(config))


def kv_bytes_per_token(config: ModelConfig, dtype: str) -> int:
    """Keys and values of one position of one sequence, over all layers."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * DTYPE_BYTES[dtype]


class MemoryPlan(NamedTuple):
    """Bytes per device of one engine run; `peak` is what must fit."""

    width: int  # slots in all
    weights: int
    caches: int  # working and backup caches, sequence states and draw records of the slots on this device
    admission: int  # admission's extra: a fresh cache of its rows and the prompt block's activations
    decode: int  # the decode loop's temporaries
    peak: int
    device_bytes: int | None  # what a device holds; None: not known (a CPU)

    @property
    def fits(self) -> bool:
        return self.device_bytes is None or self.peak <= MARGIN * self.device_bytes


def plan(config: ModelConfig, dtype: str, prompt_block: int, max_new_tokens: int, width: int,
         data_parallel: int = 1, tensor_parallel: int = 1, device_bytes: int | None = None,
         num_draws: int = 1) -> MemoryPlan:
    """The engine's memory per device for `width` slots of prompts up to `prompt_block` tokens and
    completions up to `max_new_tokens`, each chain keeping `num_draws` draws (warmup included)."""
    size, rows = DTYPE_BYTES[dtype], math.ceil(width / data_parallel)
    length = prompt_block + max_new_tokens
    whole, split = _parameters(config)
    weights = (whole + split // tensor_parallel) * size
    cache = rows * length * kv_bytes_per_token(config, dtype) // tensor_parallel
    # per slot: both Sequences (tokens; logp, logq, entropy), and the records of its draws (tokens
    # and entropies of the draw and of what its step did not keep, DRAW_RECORD_BYTES of statistics
    # and of its step): small beside the caches, unless a run keeps thousands of long draws
    states = rows * (2 * (4 * length + 12 * max_new_tokens) + num_draws * (16 * max_new_tokens + DRAW_RECORD_BYTES))
    heads = config.num_heads // tensor_parallel
    width_of_mlp = config.intermediate_size // tensor_parallel
    admitted = min(rows, ADMISSION_ROWS)
    prompt_activations = admitted * prompt_block * (
        4 * (2 * config.hidden_size + 2 * width_of_mlp)  # residual, normed input, gate and up (float32 peaks)
        + 4 * heads * min(length, ATTENTION_CHUNK))  # one chunk's attention scores
    admission = cache * admitted // rows + prompt_activations
    decode = rows * (4 * 3 * config.vocab_size  # logits, their log-softmax, the sampler's block sums
                     + 4 * (2 * config.hidden_size + 2 * width_of_mlp) + 4 * heads * ATTENTION_CHUNK)
    peak = weights + 2 * cache + states + max(admission, decode)
    return MemoryPlan(width, weights, 2 * cache + states, admission, decode, peak, device_bytes)


def widest_width(config: ModelConfig, dtype: str, prompt_block: int, max_new_tokens: int, device_bytes: int,
                 data_parallel: int = 1, tensor_parallel: int = 1, limit: int = 4096, num_draws: int = 1) -> int:
    """The widest power of two (at most `limit`, split evenly over the data-parallel devices) whose
    plan fits `device_bytes` with the margin; 0 when not even one slot per device fits."""
    widest, width = 0, data_parallel
    while width <= limit and plan(config, dtype, prompt_block, max_new_tokens, width, data_parallel,
                                  tensor_parallel, device_bytes, num_draws).fits:
        widest, width = width, width * 2
    return widest


def engine_width(config: ModelConfig, dtype: str, prompt_block: int, max_new_tokens: int, requested: int | None,
                 default: int, device_bytes: int | None, data_parallel: int = 1, tensor_parallel: int = 1,
                 num_draws: int = 1) -> int:
    """The engine's width: `requested`, or when None the widest power of two that fits the
    device (`default` where the device's memory is not known: a CPU). PplEcmhError, naming the
    widest that fits, when `requested` does not fit or nothing does: before a compile finds out."""
    if device_bytes is None:
        return requested or default
    widest = widest_width(config, dtype, prompt_block, max_new_tokens, device_bytes, data_parallel, tensor_parallel,
                          num_draws=num_draws)
    gb = f"{device_bytes / GB:.0f} GB"
    if widest == 0:
        raise PplEcmhError(f"the model in {dtype} does not fit {gb} per device even with one slot: use more "
                           "--tensor-parallel devices or bfloat16")
    if requested is None:
        return widest
    if not plan(config, dtype, prompt_block, max_new_tokens, requested, data_parallel, tensor_parallel,
                device_bytes, num_draws).fits:
        raise PplEcmhError(f"--batch-size {requested} does not fit {gb} per device (`ppl-ecmh plan` shows why); "
                           f"the widest that does is {widest}")
    return requested


def device_memory(device) -> int | None:
    """What an accelerator can hold, as its runtime reports it; None for a CPU (no fixed limit)."""
    if device.platform == "cpu":
        return None
    stats = device.memory_stats() or {}
    return stats.get("bytes_limit")


def compiled_peak(compiled, arguments) -> int:
    """The device memory a call of a compiled program holds: every buffer it is passed
    (`arguments`, the pytree of the call's inputs: resident whether or not the program reads them;
    JAX drops the unread ones from the program, as prefill does with the last layer's MLP), and
    what XLA's buffer assignment adds, outputs not aliased to a donated input and temporaries
    (the figure `plan` is checked against)."""
    stats = compiled.memory_analysis()
    passed = sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(arguments))
    return passed + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
