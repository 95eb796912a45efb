"""AutoTokenizer: picks one of the three Llama tokenizer classes from the files of a checkpoint
folder (or hub repo) and its tokenizer_config.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llama_shared.checkpoints.gguf import open_gguf
from llama_shared.checkpoints.hub import resolve_model_dir
from llama_shared.errors import CheckpointError, TokenizerError
from llama_shared.files import open_regular, read_json
from llama_shared.tokenizers.base import TokenizerBase
from llama_shared.tokenizers.backends import (AS_WRITTEN, BYTE_LEVEL, LLAMA, backend_class, byte_level_backend,
                                              llama_backend, read_tokenizer_json, vocab_and_merges)
from llama_shared.tokenizers.fast import LlamaTokenizerFast, PreTrainedTokenizerFast
from llama_shared.tokenizers.gguf import gguf_tokenizer
from llama_shared.tokenizers.files import detect_kind
from llama_shared.tokenizers.llama3 import LLAMA3_SPECIAL_TOKENS, Llama3Tokenizer
from llama_shared.tokenizers.spm import LlamaTokenizer

TOKENIZER_FILES = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "original/tokenizer.model"]
# transformers 5's class defaults where tokenizer_config.json names no token.
_CLASS_DEFAULTS = {LLAMA: ({"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}, "left"),
                   BYTE_LEVEL: ({"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
                                 "eos_token": "<|endoftext|>"}, "right"),
                   AS_WRITTEN: ({}, "right")}
_SHARED_KEYS = ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces", "chat_template",
                "model_max_length", "padding_side", "truncation_side")
_SPM_KEYS = ("legacy", "add_prefix_space")


def _token_content(value: Any) -> str | None:
    """tokenizer_config writes special tokens as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path, TokenizerError)
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _read_text(path: Path) -> str:
    with open_regular(path, TokenizerError) as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{path} is not UTF-8 text: {exc}") from None


def _resolve_directory(name_or_path: str | Path, revision: str | None) -> Path:
    try:
        # config.json too: its tokenizer_class is the fallback for a tokenizer_config without one.
        return Path(resolve_model_dir(name_or_path, required=(), allow_patterns=[*TOKENIZER_FILES, "config.json"],
                                      revision=revision))
    except CheckpointError as e:
        raise TokenizerError(f"no tokenizer at {name_or_path}: {e}") from None


class AutoTokenizer:
    """Load the right tokenizer class for a checkpoint, as transformers' AutoTokenizer does for Llama."""

    @staticmethod
    def from_pretrained(name_or_path: str | Path, *, use_fast: bool = True, revision: str | None = None,
                        gguf_file: str | None = None, **overrides: Any) -> TokenizerBase:
        """tokenizer.json -> PreTrainedTokenizerFast built as transformers 5 builds it for the
        folder's tokenizer_class (backends.py); a sentencepiece tokenizer.model -> LlamaTokenizerFast
        (converted) or LlamaTokenizer (use_fast=False); a tiktoken tokenizer.model (also under
        original/) -> Llama3Tokenizer; gguf_file -> the tokenizer in that GGUF file's metadata.
        tokenizer_config.json supplies special tokens, add_bos/add_eos, legacy, add_prefix_space and
        chat_template; keyword overrides win over the file."""
        if gguf_file is not None:
            return gguf_tokenizer(open_gguf(name_or_path, gguf_file, revision), **overrides)
        directory = _resolve_directory(name_or_path, revision)
        # exists(), not is_file(): a FIFO or device under a tokenizer file's name is an error, not absent.
        config_file = directory / "tokenizer_config.json"
        config = _read_json(config_file) if config_file.exists() else {}
        if (directory / "special_tokens_map.json").exists():
            config = {**_read_json(directory / "special_tokens_map.json"), **config}
        if "chat_template" not in config and (directory / "chat_template.jinja").exists():
            config["chat_template"] = _read_text(directory / "chat_template.jinja")
        config = _checked_config(config, directory)
        tokens = {role: _token_content(config[role]) for role in ("bos_token", "eos_token", "unk_token", "pad_token")
                  if role in config}
        kwargs = {key: config[key] for key in _SHARED_KEYS if config.get(key) is not None}
        kwargs.update(tokens)

        tokenizer_json = directory / "tokenizer.json"
        model_file = next((p for p in (directory / "tokenizer.model", directory / "original" / "tokenizer.model")
                           if p.exists()), None)
        kind = detect_kind(model_file) if model_file is not None else None
        if kind == "tiktoken" and not tokenizer_json.exists():
            kwargs.pop("unk_token", None)
            kwargs["special_tokens"] = _llama3_names(config)
            return Llama3Tokenizer(model_file, **{**kwargs, **overrides})
        spm_kwargs = {key: config[key] for key in _SPM_KEYS if config.get(key) is not None}
        if tokenizer_json.exists() and use_fast:
            return _from_tokenizer_json(directory, config, overrides)
        if kind == "sentencepiece":
            cls = LlamaTokenizerFast if use_fast else LlamaTokenizer
            return cls(model_file, **{**kwargs, **spm_kwargs, **overrides})
        raise TokenizerError(f"{directory} holds no tokenizer.json and no tokenizer.model"
                             + (" usable without tokenizer.json" if model_file is not None else ""))


def _checked_config(config: dict[str, Any], directory: Path) -> dict[str, Any]:
    """tokenizer_config.json (with special_tokens_map.json) with the types of the fields read checked,
    and a list of named chat templates (transformers' form) reduced to its "default" one."""
    def fail(key: str, expected: str) -> None:
        raise TokenizerError(f"{directory}/tokenizer_config.json: field {key!r} must be {expected}, got "
                             f"{config[key]!r}")

    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if key in config and not isinstance(_token_content(config[key]), (str, type(None))):
            fail(key, "a string, an object with a string 'content', or null")
    for key in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces", "legacy", "add_prefix_space"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            fail(key, "true, false or null")
    length = config.get("model_max_length")
    if length is not None and not (isinstance(length, (int, float)) and not isinstance(length, bool)
                                   and math.isfinite(length) and length > 0):
        fail("model_max_length", "a positive number")
    decoder = config.get("added_tokens_decoder")
    if decoder is not None and not (isinstance(decoder, dict) and all(key.isdigit() for key in decoder)):
        fail("added_tokens_decoder", "an object keyed by token ids")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if not isinstance(named.get("default"), str):
            fail("chat_template", "a string or a list of {'name', 'template'} objects with a 'default' one")
        config = {**config, "chat_template": named["default"]}
    elif template is not None and not isinstance(template, str):
        fail("chat_template", "a string")
    return config


def _llama3_names(config: dict[str, Any]) -> list[str] | str:
    """The 256 special-token names from tokenizer_config's added_tokens_decoder, else the 3.1 names."""
    decoder = config.get("added_tokens_decoder") or {}
    names = {int(i): _token_content(t) for i, t in decoder.items()}
    if len(names) == len(LLAMA3_SPECIAL_TOKENS["3.1"]):
        first = min(names)
        return [names[first + i] for i in range(len(names))]
    return "3.1"


def _from_tokenizer_json(directory: Path, config: dict[str, Any], overrides: dict[str, Any]) -> PreTrainedTokenizerFast:
    """The tokenizer transformers 5 builds from a tokenizer.json and its tokenizer_config.json."""
    from tokenizers import Tokenizer

    path = directory / "tokenizer.json"
    text, content = read_tokenizer_json(path)
    declared = config.get("tokenizer_class")
    if declared is None and (directory / "config.json").is_file():
        declared = _read_json(directory / "config.json").get("tokenizer_class")
    kind = backend_class(declared, text, str(directory / "tokenizer_config.json"))
    if kind == AS_WRITTEN:
        backend = Tokenizer.from_str(text)
    else:
        vocab, merges = vocab_and_merges(content, str(path))
        if kind == LLAMA:
            backend = llama_backend(vocab, merges, config.get("add_prefix_space"), bool(config.get("legacy", False)))
        else:
            backend = byte_level_backend(vocab, merges, bool(config.get("add_prefix_space", False)))
        backend.post_processor = _post_processor_of(content)
    defaults, padding_side = _CLASS_DEFAULTS[kind]
    kwargs: dict[str, Any] = {**defaults, "padding_side": padding_side}
    kwargs.update({role: config[role] for role in ("bos_token", "eos_token", "unk_token", "pad_token") if role in config})
    kwargs.update({key: config[key] for key in _SHARED_KEYS if config.get(key) is not None})
    decoder = config.get("added_tokens_decoder") or {}
    kwargs["added_tokens"] = [decoder[i] for i in sorted(decoder, key=int)]
    return PreTrainedTokenizerFast(backend, **{**kwargs, **overrides})


def _post_processor_of(content: dict[str, Any]):
    """The post-processor of a parsed tokenizer.json, built without its vocabulary."""
    from tokenizers import Tokenizer

    if not content.get("post_processor"):
        return None
    minimal = {**content, "added_tokens": [], "model": {**content["model"], "vocab": {}, "merges": []}}
    return Tokenizer.from_str(json.dumps(minimal)).post_processor
