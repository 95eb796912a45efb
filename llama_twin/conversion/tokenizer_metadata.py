"""A tokenizer as GGUF metadata (what llama.cpp's convert_hf_to_gguf.py writes) and as the
tokenizer.json / tokenizer_config.json of a Hugging Face folder (what a GGUF source gives the
folder it converts into)."""

from __future__ import annotations

import json
import re
from typing import Any

from llama_shared.errors import CheckpointError, ConversionError
from llama_shared.tokenizers.fast import LlamaTokenizerFast, PreTrainedTokenizerFast
from llama_shared.tokenizers.gguf import CONTROL, PRE_TOKENIZER_SPLITS, USER_DEFINED
from llama_shared.tokenizers.spm import LlamaTokenizer

NORMAL, UNKNOWN, UNUSED, BYTE = 1, 2, 5, 6   # llama.cpp's other token types
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def tokenizer_files(tokenizer: PreTrainedTokenizerFast) -> dict[str, dict[str, Any]]:
    """tokenizer.json and tokenizer_config.json for a tokenizer built from a GGUF file. The
    post-processor already places bos/eos, so the config names no add_bos_token and transformers
    (and AutoTokenizer) keep the file's: the class is the plain PreTrainedTokenizerFast."""
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                              "padding_side": tokenizer.padding_side}
    config.update(tokenizer.special_tokens_map)
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    return {"tokenizer.json": json.loads(tokenizer.backend_tokenizer.to_str()), "tokenizer_config.json": config}


def gguf_tokenizer_metadata(tokenizer: Any, vocab_size: int, scores: dict[str, float] | None = None) -> dict[str, Any]:
    """tokenizer.ggml.* and tokenizer.chat_template for a tokenizer: a sentencepiece-style BPE (byte
    fallback) as model "llama" with its merges and scores (the sentencepiece model's where given,
    which llama.cpp merges by; else ones that rank the merges), a byte-level BPE as model "gpt2"
    with its merges; token types, special ids, add_bos/add_eos."""
    if isinstance(tokenizer, LlamaTokenizer):
        tokenizer = LlamaTokenizerFast(vocab_file=tokenizer.vocab_file, legacy=tokenizer.legacy,
                                       bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                                       unk_token=tokenizer.unk_token, pad_token=tokenizer.pad_token,
                                       add_bos_token=tokenizer.add_bos_token, add_eos_token=tokenizer.add_eos_token,
                                       chat_template=tokenizer.chat_template)
    if not isinstance(tokenizer, (PreTrainedTokenizerFast, LlamaTokenizerFast)):
        raise ConversionError(f"the source's tokenizer ({type(tokenizer).__name__}) has no GGUF form here; GGUF "
                              "export embeds tokenizers.json BPE and sentencepiece tokenizers")
    content = json.loads(tokenizer.backend_tokenizer.to_str())
    model = content["model"]
    if model.get("type") != "BPE":
        raise ConversionError(f"the source's tokenizer.json has a {model.get('type')} model; GGUF export embeds BPE")
    size = len(tokenizer)
    if size > vocab_size:
        raise CheckpointError(f"the tokenizer has {size} tokens but the model's vocab_size is {vocab_size}")
    tokens = [tokenizer.backend_tokenizer.id_to_token(i) or f"[PAD{i}]" for i in range(vocab_size)]
    added = {token["id"]: token for token in content.get("added_tokens", [])}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    spm_style = bool(model.get("byte_fallback"))
    types = [_token_type(i, token, added, spm_style, tokenizer.unk_token) if i < size else UNUSED
             for i, token in enumerate(tokens)]
    out: dict[str, Any] = {"tokenizer.ggml.model": "llama" if spm_style else "gpt2", "tokenizer.ggml.tokens": tokens,
                           "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}
    if spm_style:
        if scores is None:
            scores = {m.replace(" ", ""): -float(r) for r, m in reversed(list(enumerate(merges)))}
        out["tokenizer.ggml.scores"] = [float(scores.get(token, 0.0)) for token in tokens]
    else:
        out["tokenizer.ggml.pre"] = _pre_tokenizer_name(content.get("pre_tokenizer"))
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        index = getattr(tokenizer, f"{role}_token_id")
        if index is not None:
            out[f"tokenizer.ggml.{key}"] = int(index)
    out["tokenizer.ggml.add_bos_token"] = bool(tokenizer.add_bos_token)
    out["tokenizer.ggml.add_eos_token"] = bool(tokenizer.add_eos_token)
    if tokenizer.chat_template:
        out["tokenizer.chat_template"] = tokenizer.chat_template
    return out


def _token_type(index: int, token: str, added: dict[int, dict], spm_style: bool, unk: str | None) -> int:
    if index in added:
        return CONTROL if added[index].get("special") else USER_DEFINED
    if token == unk:
        return UNKNOWN
    if spm_style and _BYTE_TOKEN.match(token):
        return BYTE
    return NORMAL


def _pre_tokenizer_name(pre_tokenizer: dict[str, Any] | None) -> str:
    """llama.cpp's tokenizer.ggml.pre for a byte-level pre-tokenizer: "llama-bpe" for Llama 3's split,
    "smollm" for single digits before GPT-2's split, "gpt-2" for GPT-2's alone."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer or {}])
    kinds = [step.get("type") for step in steps]
    patterns = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
    if patterns and patterns[0] == PRE_TOKENIZER_SPLITS["llama-bpe"]:
        return "llama-bpe"
    if "Digits" in kinds:
        return "smollm"
    return "gpt-2"
