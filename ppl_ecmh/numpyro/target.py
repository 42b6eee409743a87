"""The power target pi_alpha(x | c) proportional to p(x | c)^alpha, as a NumPyro model (DESIGN section 1).

    x = numpyro.sample("x", LanguageModelSequence(lm, prompt, max_new_tokens))  # log p(x | c)
    sharpen("sharpen", sequence, x, alpha)                                       # + (alpha - 1) log p(x | c)

`sharpen` is `numpyro.factor` with the exponent recorded on the site, which lets the kernels find
alpha in the model instead of taking it twice. The kernels' fast path tracks alpha * sum of
per-token log-probs; tests check it equals `numpyro.infer.util.log_density` of this model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.distribution import Unit

from ppl_ecmh.lm.generation import (UNFINISHED, completion_tokens, extend, new_sequences, prefill, sequence_log_prob,
                                    teacher_force)
from ppl_ecmh.validation import check_alpha, check_fits_context, check_positive_int

SHARPENING_EXPONENT = "sharpening_exponent"


def _prompt_tokens(prompt) -> tuple[int, ...]:
    tokens = tuple(int(t) for t in np.asarray(prompt).reshape(-1))
    if not tokens:
        raise ValueError("prompt: must contain at least one token")
    return tokens


def _prompt_batch(prompt) -> tuple[tuple[tuple[int, ...], ...], bool]:
    """One prompt (a token sequence) or a batch of them (a sequence of token sequences, ragged
    allowed): the prompts as tuples, and whether it was a batch."""
    batched = len(prompt) > 0 and np.ndim(prompt[0]) > 0
    return (tuple(_prompt_tokens(p) for p in prompt) if batched else (_prompt_tokens(prompt),)), batched


class LanguageModelSequence(Distribution):
    """Completions of `prompt` under the language model: sample = ancestral generation (until EOS
    or max_new_tokens), log_prob = log p(x | prompt). Values are [..., max_new_tokens] token arrays
    padded with EOS after the first EOS, or with UNFINISHED (-1) after a completion that stopped
    short without EOS (a block-wise stage draw), which log_prob scores as that prefix. A batch of prompts (independent problems, as in an
    evaluation) gives batch_shape (num_prompts,). `work_ids`, one integer per prompt (default: its
    index), name the prompts to the samplers whose randomness is keyed by work (Power-SMC, TMC):
    a prompt's draws then depend on its id, not on its place in the batch."""

    support = constraints.integer_greater_than(UNFINISHED - 1)  # token ids, or UNFINISHED padding
    is_discrete = True
    pytree_data_fields = ("lm",)
    pytree_aux_fields = ("prompts", "max_new_tokens", "prompt_block", "work_ids")

    def __init__(self, lm, prompt: Sequence[int] | Sequence[Sequence[int]], max_new_tokens: int,
                 prompt_block: int | None = None, work_ids: Sequence[int] | None = None, validate_args=None):
        self.lm = lm
        self.prompts, batched = _prompt_batch(prompt)
        self.work_ids = tuple(range(len(self.prompts))) if work_ids is None else tuple(int(i) for i in work_ids)
        if len(self.work_ids) != len(self.prompts):
            raise ValueError(f"work_ids: {len(self.work_ids)} ids for {len(self.prompts)} prompts")
        self.max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
        self.prompt_block = prompt_block  # padded prompt width (see `new_sequences`); None: the longest prompt
        check_fits_context(lm, max([len(p) for p in self.prompts] + [prompt_block or 0]), self.max_new_tokens)
        batch_shape = (len(self.prompts),) if batched else ()
        super().__init__(batch_shape=batch_shape, event_shape=(self.max_new_tokens,), validate_args=validate_args)

    @property
    def pad_id(self) -> int:
        return self.lm.eos_token_ids[0]

    def empty_sequences(self, num: int):
        """`Sequences` for `num` samples with empty completions; rows are sample-major (sample i,
        prompt j is row i * num_prompts + j), matching a reshape of [num, *batch_shape]."""
        rows = [prompt for _ in range(num) for prompt in self.prompts]
        return new_sequences(rows, self.max_new_tokens, pad_id=self.pad_id, prompt_block=self.prompt_block)

    def sample(self, key, sample_shape=()):
        num = math.prod(sample_shape) if sample_shape else 1
        seqs = self.empty_sequences(num)
        start = jnp.zeros(seqs.length.shape, jnp.int32)
        seqs, _ = extend(self.lm, key, seqs, prefill(self.lm, seqs), start, start + self.max_new_tokens, 1.0)
        tokens = completion_tokens(seqs, self.pad_id)
        return tokens.reshape(tuple(sample_shape) + self.batch_shape + self.event_shape)

    def log_prob(self, value):
        value = jnp.asarray(value, jnp.int32)
        batch_shape = value.shape[:-1]
        flat = value.reshape(-1, self.max_new_tokens)
        scored, _ = _score(self.lm, self.empty_sequences(flat.shape[0] // len(self.prompts)), flat)
        return sequence_log_prob(scored).reshape(batch_shape)


# scoring compiled as one program, also when numpyro calls log_prob outside jit
_score = jax.jit(lambda lm, seqs, completions: teacher_force(lm, seqs, completions, tau=1.0))


def sharpen(name: str, sequence: LanguageModelSequence, x, alpha: float) -> None:
    """`numpyro.factor(name, (alpha - 1) * log p(x))`, with alpha recorded for the kernels."""
    alpha = check_alpha(alpha)
    unit = Unit((alpha - 1.0) * sequence.log_prob(x))
    numpyro.sample(name, unit, obs=unit.sample(None), infer={"is_auxiliary": True, SHARPENING_EXPONENT: alpha})


def power_model(lm, prompt: Sequence[int], alpha: float = 4.0, max_new_tokens: int = 256,
                prompt_block: int | None = None, work_ids: Sequence[int] | None = None):
    """The NumPyro model of pi_alpha(x | prompt): one sequence site `x` and the sharpening factor.
    `prompt` may be a batch of prompts (independent problems); `prompt_block` fixes the padded
    prompt width so that batches of different prompts share compiled programs; `work_ids` name
    the prompts (see `LanguageModelSequence`)."""
    sequence = LanguageModelSequence(lm, prompt, max_new_tokens, prompt_block, work_ids)
    x = numpyro.sample("x", sequence)
    sharpen("sharpen", sequence, x, alpha)


@dataclasses.dataclass(frozen=True)
class PowerTarget:
    """What the kernels read off a model: the sequence site and the exponent."""

    site: str
    sequence: LanguageModelSequence
    alpha: float

    @property
    def lm(self):
        return self.sequence.lm

    @property
    def max_new_tokens(self) -> int:
        return self.sequence.max_new_tokens

    @property
    def pad_id(self) -> int:
        return self.lm.eos_token_ids[0]


def find_power_target(model, model_args=(), model_kwargs=None) -> PowerTarget:
    """Trace `model` (without generating or scoring anything) and return its power target.

    Supported models have exactly one unobserved `LanguageModelSequence` site and at most one
    `sharpen` factor (none means alpha = 1); anything else raises ValueError. The model runs under
    `jax.eval_shape`, so the forward pass its sharpen factor asks for is traced and never computed:
    run for real, it cost a third of an ancestral batch on a 0.5B model.
    """
    from numpyro import handlers

    def placeholder(site):
        fn = site["fn"]
        if isinstance(fn, LanguageModelSequence):
            return jnp.full(fn.shape(), fn.pad_id, jnp.int32)
        return None

    traced = handlers.trace(handlers.seed(handlers.substitute(model, substitute_fn=placeholder), 0))
    sequences, exponents, others = {}, [], []

    def read_sites():  # only Python values leave: no tracer escapes eval_shape
        for name, site in traced.get_trace(*model_args, **(model_kwargs or {})).items():
            if site["type"] != "sample":
                continue
            if isinstance(site["fn"], LanguageModelSequence) and not site["is_observed"]:
                sequences[name] = site["fn"]
            elif SHARPENING_EXPONENT in (site.get("infer") or {}):
                exponents.append(site["infer"][SHARPENING_EXPONENT])
            else:
                others.append(name)

    jax.eval_shape(read_sites)
    if len(sequences) != 1 or len(exponents) > 1 or others:
        raise ValueError(
            "model: the sequence kernels need one LanguageModelSequence site and at most one "
            f"`sharpen` factor (see ppl_ecmh.power_model); found sequence sites {list(sequences)}, "
            f"{len(exponents)} sharpen factors and other sites {others}"
        )
    alpha = exponents[0] if exponents else 1.0
    (site, sequence), = sequences.items()
    return PowerTarget(site, sequence, check_alpha(alpha))
