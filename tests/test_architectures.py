"""Every architecture and RoPE scaling type against transformers, on tiny random checkpoints saved
with `save_pretrained`: logits within 1e-3 in float32 at lengths on both sides of each scaling
threshold (a small `original_max_position_embeddings`), bf16 as close to float32 as transformers'
own bf16, and each mistake the issue names (no q_norm, every dim rotated, LongRoPE's short factors
past the threshold, no YaRN attention factor) caught by the same comparison."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_ecmh import PromptTooLongError, UnsupportedModelError, load_model
from ppl_ecmh.lm.hf_checkpoint import config_from_hf
from ppl_ecmh.lm.rope import run_scaling

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ORIGINAL = 16  # the threshold of every scaled config: lengths 10 and 40 sit on either side
LENGTHS = (10, 40)
COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              initializer_range=0.1)  # weights large enough that attention, and so RoPE, moves the logits


def longrope(rotary_dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return dict(rope_type="longrope", short_factor=list(rng.uniform(1.0, 1.5, rotary_dim // 2)),
                long_factor=list(rng.uniform(2.0, 6.0, rotary_dim // 2)))


def hf_config(kind: str):
    if kind == "qwen3":  # explicit head_dim unlike hidden / heads, q_norm and k_norm, no QKV bias
        return transformers.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                                        tie_word_embeddings=True, rope_theta=1e6)
    if kind == "phi3.5":  # full multi-head attention, LongRoPE, untied
        return transformers.Phi3Config(**COMMON, num_key_value_heads=4, max_position_embeddings=64,
                                       original_max_position_embeddings=ORIGINAL, rope_scaling=longrope(16, 1),
                                       tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "phi4-mini":  # grouped queries, 3/4 of each head rotated, LongRoPE, tied
        return transformers.Phi3Config(**COMMON, num_key_value_heads=2, max_position_embeddings=64,
                                       original_max_position_embeddings=ORIGINAL, partial_rotary_factor=0.75,
                                       rope_scaling=longrope(12, 2), tie_word_embeddings=True,
                                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "llama-yarn":
        return transformers.LlamaConfig(**COMMON, num_key_value_heads=2, max_position_embeddings=64,
                                        rope_scaling=dict(rope_type="yarn", factor=4.0,
                                                          original_max_position_embeddings=ORIGINAL))
    if kind == "llama-mha-linear":  # DeepSeek-Math-7B is a Llama with as many KV heads as query heads
        return transformers.LlamaConfig(**COMMON, num_key_value_heads=4, max_position_embeddings=64,
                                        rope_scaling=dict(rope_type="linear", factor=2.0))
    raise ValueError(kind)


MODEL_CLASSES = {"qwen3": "Qwen3ForCausalLM", "phi3.5": "Phi3ForCausalLM", "phi4-mini": "Phi3ForCausalLM",
                 "llama-yarn": "LlamaForCausalLM", "llama-mha-linear": "LlamaForCausalLM"}


def random_model(kind: str, folder, seed: int = 0):
    torch.manual_seed(seed)
    model = getattr(transformers, MODEL_CLASSES[kind])(hf_config(kind)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="module", params=list(MODEL_CLASSES))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = random_model(request.param, folder)
    return request.param, reference, load_model(str(folder)).lm, folder


def logits(lm, tokens) -> np.ndarray:
    """Our logits of one sequence, the decoder fitted to the sequence's length as a run is."""
    lm = lm.for_context(len(tokens), stretch=True)
    tokens = jnp.asarray(tokens, jnp.int32)[None]
    out, _ = jax.jit(lambda lm, c, t, p: lm.forward(c, t, p))(
        lm, lm.init_cache(1, tokens.shape[1]), tokens, jnp.arange(tokens.shape[1])[None])
    return np.asarray(out[0], np.float32)


def reference_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens))[None]).logits[0].float().numpy()


def error(model, lm, length: int, seed: int = 0) -> float:
    tokens = np.random.default_rng(seed).integers(3, 97, size=length)
    return float(np.abs(logits(lm, tokens) - reference_logits(model, tokens)).max())


@pytest.mark.parametrize("length", LENGTHS)
def test_architecture_matches_transformers_on_both_sides_of_the_scaling_threshold(pair, length):
    _, reference, lm, _ = pair
    assert error(reference, lm, length) < 1e-3


def test_bfloat16_is_as_close_to_float32_as_transformers_own_bfloat16(pair):
    kind, reference, _, folder = pair
    tokens = np.random.default_rng(5).integers(3, 97, size=40)
    exact = reference_logits(reference, tokens)
    theirs = np.abs(reference_logits(reference.to(torch.bfloat16), tokens) - exact).max()
    reference.to(torch.float32)
    ours = np.abs(logits(load_model(str(folder), dtype="bfloat16").lm, tokens) - exact).max()
    assert ours <= max(2 * theirs, 0.02), (kind, ours, theirs)


def mutated(lm, **changes):
    """`lm` with its config changed: a deliberately wrong implementation of the checkpoint."""
    return dataclasses.replace(lm, config=dataclasses.replace(lm.config, **changes))


def scaling_with(lm, **entries) -> tuple:
    return tuple(sorted((dict(lm.config.rope_scaling) | entries).items()))


@pytest.mark.parametrize("kind, mistake, length", [
    ("qwen3", lambda lm: mutated(lm, qk_norm=False), 10),
    ("phi4-mini", lambda lm: mutated(lm, partial_rotary_factor=1.0, rope_scaling=scaling_with(
        lm, short_factor=dict(lm.config.rope_scaling)["short_factor"] + (1.0, 1.0),
        long_factor=dict(lm.config.rope_scaling)["long_factor"] + (1.0, 1.0))), 10),
    ("phi3.5", lambda lm: mutated(lm, rope_scaling=scaling_with(
        lm, long_factor=dict(lm.config.rope_scaling)["short_factor"])), 40),
    ("llama-yarn", lambda lm: mutated(lm, rope_scaling=scaling_with(lm, attention_factor=1.0)), 10),
    ("llama-mha-linear", lambda lm: mutated(lm, rope_scaling=None), 40),
])
def test_each_named_mistake_fails_the_oracle(kind, mistake, length, tmp_path):
    reference = random_model(kind, tmp_path)
    lm = load_model(str(tmp_path)).lm
    assert error(reference, lm, length) < 1e-3
    assert error(reference, mistake(lm), length) > 0.1


def test_longrope_picks_its_factors_by_the_runs_length(tmp_path):
    """Within the original context the short factors give transformers' logits and the long ones
    do not; past it, the reverse: the choice is the run's, not the checkpoint's."""
    reference = random_model("phi3.5", tmp_path)
    lm = load_model(str(tmp_path)).lm
    tokens = np.random.default_rng(3).integers(3, 97, size=10)
    expected = reference_logits(reference, tokens)
    fitted = lm.for_context(10)
    stretched = dataclasses.replace(lm.for_context(40), context_length=10)  # long factors at length 10
    assert np.abs(logits(fitted, tokens) - expected).max() < 1e-3
    assert (fitted.rope_scaling["factors_in_use"], lm.for_context(40).rope_scaling["factors_in_use"]) == (
        "short_factor", "long_factor")  # what a run's settings record
    out, _ = stretched.forward(stretched.init_cache(1, 10), jnp.asarray(tokens)[None], jnp.arange(10)[None])
    assert np.abs(np.asarray(out[0]) - expected).max() > 1e-2


def test_yarn_stretches_an_unscaled_model_past_its_limit_as_the_ecmh_code_does(tmp_path):
    """Qwen2.5-Math-7B's 4,096 positions are stretched with YaRN, factor = length / limit: a Qwen2
    whose limit is 16, run at 40 positions, gives the logits of transformers' YaRN of factor 40/16."""
    torch.manual_seed(0)
    base = dict(COMMON, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e4)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**base, max_position_embeddings=ORIGINAL)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    stretched = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **base, max_position_embeddings=40,
        rope_scaling=dict(rope_type="yarn", factor=40 / ORIGINAL, original_max_position_embeddings=ORIGINAL))).eval()
    stretched.load_state_dict(model.state_dict())
    lm = load_model(str(tmp_path)).lm
    assert error(stretched, lm, 40) < 1e-3
    assert error(model, lm, 40) > 1e-2  # unstretched RoPE is another model past the limit
    assert lm.for_context(40, stretch=True).rope_scaling == dict(factor=2.5, original_max_position_embeddings=16,
                                                                 rope_type="yarn")
    assert lm.for_context(16).rope_scaling is None
    with pytest.raises(PromptTooLongError, match="--stretch-context"):
        lm.for_context(17)


def test_a_scaled_model_past_its_limit_and_a_sliding_window_are_refused(tmp_path):
    with pytest.raises(PromptTooLongError, match="cannot be stretched"):
        run_scaling(config_from_hf(hf_config("llama-yarn").to_dict()), 65, stretch=True)
    windowed = config_from_hf(dict(hf_config("llama-mha-linear").to_dict(), model_type="mistral", sliding_window=32))
    assert run_scaling(windowed, 32) is not None
    with pytest.raises(UnsupportedModelError, match="sliding_window"):
        run_scaling(windowed, 33)


@pytest.mark.parametrize("field, value, message", [
    ("model_type", "gemma", "model_type"),
    ("rope_scaling", dict(rope_type="dynamic", factor=2.0), "rope_scaling"),
    ("partial_rotary_factor", 0.01, "partial_rotary_factor"),
])
def test_an_unsupported_config_is_one_error_naming_the_field(field, value, message):
    config = hf_config("qwen3").to_dict() | {field: value}
    config.pop("rope_parameters", None) if field == "rope_scaling" else None
    with pytest.raises(UnsupportedModelError, match=message):
        config_from_hf(config)


def test_a_sharded_bfloat16_checkpoint_loads_as_saved(tmp_path):
    """The published checkpoints come in bf16 shards: every shard is read, and float32 logits of the
    bf16 weights are transformers' float32 logits of the same weights."""
    reference = random_model("phi4-mini", tmp_path / "whole").to(torch.bfloat16)
    reference.save_pretrained(tmp_path / "shards", safe_serialization=True, max_shard_size="40KB")
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) > 2
    lm = load_model(str(tmp_path / "shards")).lm
    assert error(reference.to(torch.float32), lm, 40) < 1e-3
