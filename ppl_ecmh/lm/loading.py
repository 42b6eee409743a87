"""`load_model`: one entry point for registered names, GGUF files, model folders and hub ids."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ppl_ecmh.errors import ModelNotFoundError
from ppl_ecmh.lm.config import ModelConfig
from ppl_ecmh.lm.gguf_checkpoint import config_from_gguf, load_gguf, read_gguf
from ppl_ecmh.lm.hf_checkpoint import config_from_hf, download_from_hub, load_hf_folder
from ppl_ecmh.lm.registry import EMBEDDED_MODELS
from ppl_ecmh.lm.transformer import Transformer


@dataclasses.dataclass
class LoadedModel:
    """A JAX decoder with its tokenizer. `lm` is what the samplers take; the rest is text I/O."""

    lm: Transformer
    tokenizer: object
    source: str

    def encode(self, text: str, chat: bool = False, system: str | None = None) -> list[int]:
        """Prompt token ids; with `chat`, wrapped in the model's chat template as a user turn."""
        if not text:
            raise ValueError("prompt: must not be empty")
        if self.tokenizer is None:
            raise ModelNotFoundError(f"{self.source} has no tokenizer; pass token ids instead")
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": text}
            ]
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = self.tokenizer(text)["input_ids"]
        return [int(i) for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def pieces(self, *token_arrays) -> dict[int, str]:
        """The text of each token id in `token_arrays`, special tokens included, for showing a
        completion token by token (a byte-level token that is part of a character shows as U+FFFD)."""
        ids = np.unique(np.concatenate([np.ravel(np.asarray(array)) for array in token_arrays]))
        return {int(i): self.tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids}

    def fit_context(self, prompt_length: int, max_new_tokens: int, stretch: bool = False) -> None:
        """Fit the decoder to runs of `prompt_length + max_new_tokens` positions: the RoPE tables
        such a run uses (`Transformer.for_context`); PromptTooLongError when it does not reach."""
        self.lm = self.lm.for_context(prompt_length + max_new_tokens, stretch)


def load_model(name_or_path: str, dtype: str = "float32") -> LoadedModel:
    """Load a model by registered name (`smollm2-135m`), GGUF path, local folder or hub id.

    dtype: "float32" (default, the oracle-tested precision) or "bfloat16".
    """
    kind, where = _locate(str(name_or_path))
    if kind == "gguf":
        lm, tokenizer = load_gguf(str(where), dtype)
    else:
        lm, tokenizer = load_hf_folder(download_from_hub(where) if kind == "hub" else where, dtype)
    return LoadedModel(lm, tokenizer, str(name_or_path))


def model_config(name_or_path: str) -> ModelConfig | None:
    """The model's architecture, read without its weights (to check options before a load); None
    for a hub id, which would have to be downloaded first."""
    kind, where = _locate(str(name_or_path))
    if kind == "gguf":
        reader, metadata = read_gguf(str(where))
        return config_from_gguf(metadata, {tensor.name for tensor in reader.tensors})
    if kind == "folder":
        config_file = Path(where) / "config.json"
        if not config_file.is_file():
            raise ModelNotFoundError(f"{where} has no config.json")
        return config_from_hf(json.loads(config_file.read_text()))
    return None


def _locate(source: str) -> tuple[str, object]:
    """("gguf", file), ("folder", path) or ("hub", id) for a model name or path."""
    if source in EMBEDDED_MODELS:
        return "gguf", EMBEDDED_MODELS[source].locate()
    path = Path(source).expanduser()
    if path.is_file():
        return "gguf", path
    if path.is_dir():
        return "folder", path
    if _is_hub_id(source):
        return "hub", source
    known = ", ".join(sorted(EMBEDDED_MODELS))
    raise ModelNotFoundError(f"no model {source!r}: not a registered name ({known}), a GGUF file, a folder or a hub id")


def _is_hub_id(source: str) -> bool:
    """`org/name`, and not something that looks like a local path: no network access is tried
    for a path that merely does not exist (its folder exists here, or it names a weights file)."""
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        return False
    if source.endswith((".gguf", ".safetensors", ".bin", ".json")):
        return False
    return not Path(source).parent.is_dir()
