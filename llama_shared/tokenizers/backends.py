"""The tokenizers.Tokenizer pipelines transformers 5 builds for a Llama-architecture model, so that
AutoTokenizer gives its ids for a folder or a GGUF file.

transformers 5 rebuilds a tokenizer.json whose tokenizer_config names a model class: `LlamaTokenizer`
keeps the vocabulary and merges but sets its own Metaspace pre-tokenizer and decoder (byte
fallback, no normalizer); `GPT2Tokenizer` keeps them but sets a plain byte-level pre-tokenizer and
decoder (dropping, for example, a digit split the file had). `PreTrainedTokenizerFast` and
`TokenizersBackend` take the file as written. The class is chosen as transformers' AutoTokenizer
chooses it for a llama model (`tokenizer_class`, falling back to LlamaTokenizer, and
TokenizersBackend for a file declared Llama that is byte-level).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from llama_shared.errors import TokenizerError

LLAMA, BYTE_LEVEL, AS_WRITTEN = "LlamaTokenizer", "GPT2Tokenizer", "TokenizersBackend"
_CLASSES = {"LlamaTokenizer": LLAMA, "GPT2Tokenizer": BYTE_LEVEL, "PreTrainedTokenizer": AS_WRITTEN,
            "PreTrainedTokenizerFast": AS_WRITTEN, "TokenizersBackend": AS_WRITTEN}


def backend_class(tokenizer_class: str | None, tokenizer_json_text: str, where: str) -> str:
    """LLAMA, BYTE_LEVEL or AS_WRITTEN for a tokenizer_config's tokenizer_class, as transformers 5's
    AutoTokenizer decides for a llama model."""
    name = (tokenizer_class or "LlamaTokenizer").removesuffix("Fast")
    if name not in _CLASSES:
        raise TokenizerError(f"{where}: tokenizer_class {tokenizer_class!r} is not a Llama-architecture tokenizer "
                             f"this package builds; expected one of {sorted(_CLASSES)} (with or without 'Fast')")
    if _CLASSES[name] == LLAMA and tokenizer_class is not None and '"ByteLevel"' in tokenizer_json_text:
        return AS_WRITTEN
    return _CLASSES[name]


def prepend_scheme(add_prefix_space: bool, legacy: bool) -> str:
    """transformers' Metaspace prepend scheme: 'first' for non-legacy Llama, 'always' for legacy."""
    if not add_prefix_space:
        return "never"
    return "always" if legacy else "first"


def llama_backend(vocab: dict[str, int], merges: list[tuple[str, str]], add_prefix_space: bool | None = None,
                  legacy: bool = False):
    """transformers 5's LlamaTokenizer pipeline: BPE with byte fallback, Metaspace, no normalizer."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    add_prefix_space = True if add_prefix_space is None else add_prefix_space
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", split=False,
                                                       prepend_scheme=prepend_scheme(add_prefix_space, legacy))
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def byte_level_backend(vocab: dict[str, int], merges: list[tuple[str, str]], add_prefix_space: bool = False):
    """transformers 5's GPT2Tokenizer pipeline: byte-level BPE, pre-tokenizer and decoder."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                              end_of_word_suffix="", fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def vocab_and_merges(tokenizer_json: dict[str, Any], where: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges of a tokenizer.json (both merge spellings)."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(f"{where}: the model is {model.get('type')!r}; a Llama or GPT-2 tokenizer class "
                             "needs a BPE model")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    return dict(model["vocab"]), merges


def generate_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """transformers' generate_merges for a scored vocabulary: every split of a piece into two
    vocabulary pieces, highest score first."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of each byte, as byte-level vocabularies write them."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def read_tokenizer_json(path: Path) -> tuple[str, dict[str, Any]]:
    """The text and parsed content of a tokenizer.json."""
    try:
        text = path.read_text(encoding="utf-8")
        return text, json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path} is not a readable tokenizer.json: {exc}") from None
