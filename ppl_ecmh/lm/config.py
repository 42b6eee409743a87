"""Architecture hyper-parameters of a decoder-only transformer (Llama, Mistral, Qwen2/3, Phi-3).

The differences between the supported families are expressed here, not in copies of the forward
pass: Qwen2 is a Llama with biases on the q/k/v projections; Qwen3 one with an RMSNorm over each
query and key head (`qk_norm`); Phi-3 one whose checkpoints fuse q/k/v and gate/up (split when
loaded, `weights.py`), which rotates a fraction of each head (`partial_rotary_factor`) with
LongRoPE (`rope.py`). Full multi-head attention is num_kv_heads == num_heads.
"""

from __future__ import annotations

import dataclasses
from ppl_ecmh.errors import UnsupportedModelError
from ppl_ecmh.lm.rope import ROPE_TYPES, scaling_type

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static shape and numerics of a decoder. Hashable, so it can be a static jit argument."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, object], ...] | None = None
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    qk_norm: bool = False  # Qwen3: RMSNorm over each query and key head, before RoPE
    partial_rotary_factor: float = 1.0  # RoPE on the first int(head_dim * factor) dims of a head
    sliding_window: int | None = None  # attention reaches this many positions back (runs longer are refused)

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"unsupported architecture {self.architecture!r}; supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        kind = scaling_type(dict(self.rope_scaling or ()))
        if kind not in ROPE_TYPES:
            raise UnsupportedModelError(f"rope_scaling: unsupported type {kind!r}; supported: {', '.join(ROPE_TYPES)}")
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise UnsupportedModelError(
                f"partial_rotary_factor={self.partial_rotary_factor} rotates {self.rotary_dim} of "
                f"{self.head_dim} dims; it must be an even number above 0"
            )

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def eos_token_id(self) -> int:
        """The first end-of-sequence id (generation stops on any of `eos_token_ids`)."""
        return self.eos_token_ids[0]
