"""GGUF files written here from a tiny random Llama, the way llama.cpp's converter writes them
(Q and K rows permuted for its rotary layout), in every quantization gguf-py can produce."""

import math

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_ecmh import UnsupportedModelError, load_model
from tests.test_architectures import LENGTHS, error, random_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HEADS, KV_HEADS = 4, 2


def permute_like_llama_cpp(weight, heads):
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                      max_position_embeddings=64, tie_word_embeddings=False, rms_norm_eps=1e-5)
    return transformers.LlamaForCausalLM(config).eval()


LAYER_NAMES = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
               "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
               "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
               "mlp.down_proj.weight": "ffn_down.weight", "self_attn.q_norm.weight": "attn_q_norm.weight",
               "self_attn.k_norm.weight": "attn_k_norm.weight", "self_attn.qkv_proj.weight": "attn_qkv.weight",
               "mlp.gate_up_proj.weight": "ffn_up.weight"}


def write_gguf(path, model, quantization: str, arch: str = "llama"):
    """Our own minimal llama.cpp-style writer: HF names -> GGUF names, Q/K permuted for a Llama,
    Phi-3's fused tensors kept fused and its LongRoPE factors written as tensors, with the
    original context and attention factor in the metadata, as llama.cpp's converter does."""
    qtype = gguf.GGMLQuantizationType[quantization]
    writer = gguf.GGUFWriter(str(path), arch)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(int(head_dim * config.rope_parameters.get("partial_rotary_factor", 1.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = config.rope_parameters
    if rope.get("rope_type") == "longrope":
        original = rope["original_max_position_embeddings"]
        scale = config.max_position_embeddings / original
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], np.float32))
        writer.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], np.float32))
    alphabet = [chr(c) for c in range(ord("!"), ord("!") + config.vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(alphabet)
    writer.add_token_types([1] * config.vocab_size)
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    tied = config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        weight = tensor.numpy().astype(np.float32)
        if name.startswith("model.layers."):
            _, _, index, rest = name.split(".", 3)
            target = f"blk.{index}.{LAYER_NAMES[rest]}"
        else:
            target = names[name]
        if arch == "llama" and name.endswith("q_proj.weight"):
            weight = permute_like_llama_cpp(weight, config.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            weight = permute_like_llama_cpp(weight, config.num_key_value_heads)
        if weight.ndim == 2 and quantization != "F32":
            writer.add_tensor(target, gguf.quants.quantize(weight, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(target, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_f32_gguf_gives_transformers_logits(reference, tmp_path):
    write_gguf(tmp_path / "tiny.gguf", reference, "F32")
    loaded = load_model(str(tmp_path / "tiny.gguf"))
    tokens = np.random.default_rng(0).integers(0, 96, size=20)
    with torch.no_grad():
        expected = reference(torch.tensor(tokens)[None]).logits[0].numpy()
    cache = loaded.lm.init_cache(1, 20)
    logits, _ = loaded.lm.forward(cache, jnp.asarray(tokens)[None], jnp.arange(20)[None])
    assert np.abs(np.asarray(logits[0]) - expected).max() < 1e-4


@pytest.mark.parametrize("quantization", ["F16", "BF16", "Q8_0", "Q5_0", "Q4_1", "Q4_0"])
def test_quantized_gguf_weights_are_dequantized_in_place(reference, tmp_path, quantization):
    """Each loaded matrix equals the original up to that type's own rounding error (measured on
    the same matrix), so a wrong layout or un-permutation (an O(1) error) cannot pass."""
    write_gguf(tmp_path / "tiny.gguf", reference, quantization)
    params = load_model(str(tmp_path / "tiny.gguf")).lm.params
    qtype = gguf.GGMLQuantizationType[quantization]
    state = reference.state_dict()
    for ours, hf in [("wq", "self_attn.q_proj.weight"), ("wk", "self_attn.k_proj.weight"),
                     ("w_down", "mlp.down_proj.weight")]:
        original = state[f"model.layers.1.{hf}"].numpy()
        rounding = np.abs(gguf.quants.dequantize(gguf.quants.quantize(original, qtype), qtype) - original).max()
        loaded = np.asarray(params["layers"][1][ours])
        assert np.abs(loaded - original).max() <= 2 * rounding + 1e-6, ours


def test_unsupported_quantization_is_reported(reference, tmp_path, monkeypatch):
    from ppl_ecmh.lm import gguf_checkpoint

    write_gguf(tmp_path / "tiny.gguf", reference, "Q8_0")
    monkeypatch.setattr(gguf_checkpoint, "SUPPORTED_QUANTIZATIONS", frozenset({"F32"}))
    with pytest.raises(UnsupportedModelError, match="Q8_0"):
        load_model(str(tmp_path / "tiny.gguf"))


@pytest.mark.parametrize("kind", ["qwen3", "phi3.5", "phi4-mini"])
@pytest.mark.parametrize("length", LENGTHS)
def test_qwen3_and_phi3_ggufs_give_transformers_logits(kind, length, tmp_path):
    """llama.cpp's qwen3 (q_norm, k_norm) and phi3 (fused qkv and gate/up, partial rotary,
    LongRoPE factors as tensors) layouts, on both sides of the LongRoPE threshold."""
    reference = random_model(kind, tmp_path / "hf")
    arch = "qwen3" if kind == "qwen3" else "phi3"
    write_gguf(tmp_path / "tiny.gguf", reference, "F32", arch)
    assert error(reference, load_model(str(tmp_path / "tiny.gguf")).lm, length) < 1e-3
