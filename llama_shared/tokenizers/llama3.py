"""Llama3Tokenizer: Meta's Llama 3 tiktoken tokenizer (split pattern, 256 special tokens from id
128000, chunking of very long runs) behind the same surface as the transformers-style classes."""

from __future__ import annotations

import base64
import os
import re
from functools import cached_property
from pathlib import Path
from typing import AbstractSet, Any, Collection, Iterator, Literal

from llama_shared.errors import TokenizerError
from llama_shared.tokenizers.base import (TokenizerBase, added_token_entry, as_id_list, copy_vocabulary_file,
                                          vocabulary_path)
from llama_shared.tokenizers.chat_template import LLAMA3_CHAT_TEMPLATE
from llama_shared.tokenizers.files import load_tiktoken_ranks

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
NUM_RESERVED_SPECIAL_TOKENS = 256
TIKTOKEN_MAX_ENCODE_CHARS = 400_000  # Meta's window for one tiktoken call
MAX_NO_WHITESPACES_CHARS = 25_000  # Meta's longest run of (non-)whitespace given to tiktoken at once


def _names(named: list[str], first_reserved: int) -> list[str]:
    reserved = NUM_RESERVED_SPECIAL_TOKENS - len(named)
    return named + [f"<|reserved_special_token_{first_reserved + i}|>" for i in range(reserved)]


# Names of ids 128000..128255 per release (transformers' DEFAULT_LLAMA_SPECIAL_TOKENS, llama-models 0.3).
LLAMA3_SPECIAL_TOKENS = {
    "3.0": _names(["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"], 5),
    "3.1": _names(["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"], 3),
    "3.2": _names(["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
                   "<|image|>"], 2),
}

_RUN = re.compile(r"\s+|\S+")


def split_long_runs(text: str, max_run: int = MAX_NO_WHITESPACES_CHARS) -> Iterator[str]:
    """Meta's _split_whitespaces_or_nonwhitespaces: cut every run of whitespace or non-whitespace
    longer than `max_run` into pieces of `max_run` characters (one regex pass instead of a char loop)."""
    cuts = [cut for m in _RUN.finditer(text) for cut in range(m.start() + max_run, m.end(), max_run)]
    bounds = [0, *cuts, len(text)]
    for start, stop in zip(bounds, bounds[1:]):
        yield text[start:stop]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, used for transformers-style token strings."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


class Llama3Tokenizer(TokenizerBase):
    """Llama 3.x tokenizer on tiktoken, id for id with Meta's Tokenizer and transformers' converted one.

    special_tokens picks the names of ids 128000-128255: "3.0", "3.1" (also 3.2/3.3 text models),
    "3.2" (llama-models' list with <|step_id|> and <|image|>), or an explicit list of 256 names.
    """

    padding_side = "right"
    pat_str = LLAMA3_PATTERN
    model_files = ("tokenizer.model",)

    def __init__(self, vocab_file: str | Path, special_tokens: str | list[str] = "3.1",
                 bos_token: str | None = "<|begin_of_text|>", eos_token: str | None = "<|end_of_text|>",
                 pad_token: str | None = None, add_bos_token: bool = True, add_eos_token: bool = False,
                 clean_up_tokenization_spaces: bool = False, chat_template: str | None = None,
                 model_max_length: int | None = None, padding_side: str | None = None,
                 truncation_side: str | None = None) -> None:
        import tiktoken

        self.vocab_file = str(vocab_file)
        self.mergeable_ranks = load_tiktoken_ranks(vocab_file)
        names = LLAMA3_SPECIAL_TOKENS.get(special_tokens) if isinstance(special_tokens, str) else list(special_tokens)
        if names is None:
            raise TokenizerError(f"special_tokens must be one of {sorted(LLAMA3_SPECIAL_TOKENS)} or a list of names, "
                                 f"got {special_tokens!r}")
        if len(set(names)) != len(names):
            raise TokenizerError("special_tokens names must be unique")
        n_base = len(self.mergeable_ranks)
        self.special_tokens = {name: n_base + i for i, name in enumerate(names)}
        self._special_by_id = {i: name for name, i in self.special_tokens.items()}
        self.model = tiktoken.Encoding(name=Path(vocab_file).name, pat_str=self.pat_str,
                                       mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens)
        self._all_special = frozenset(self.special_tokens)
        # Text without this prefix holds no special token, so it can take tiktoken's ordinary path,
        # which skips building a 256-entry special set per call.
        self._special_prefix = os.path.commonprefix(names)
        special = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": None, "pad_token": pad_token}
        for role, token in special.items():
            if token is not None and token not in self.special_tokens:
                raise TokenizerError(f"{role} {token!r} is not one of the Llama 3 special tokens of {vocab_file}")
        self._init_common(special_tokens=special, add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                          clean_up_tokenization_spaces=clean_up_tokenization_spaces, chat_template=chat_template,
                          model_max_length=model_max_length, padding_side=padding_side,
                          truncation_side=truncation_side)

    @property
    def vocab_size(self) -> int:
        return len(self.mergeable_ranks)

    def __len__(self) -> int:
        return self.vocab_size + len(self.special_tokens)

    @property
    def n_words(self) -> int:
        """Meta's name for the full vocabulary size (base + special)."""
        return len(self)

    @property
    def stop_tokens(self) -> list[int]:
        """Ids that end generation: end_of_text, eom (3.1+) and eot."""
        names = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
        return [self.special_tokens[n] for n in names if n in self.special_tokens]

    @cached_property
    def _byte_table(self) -> tuple[dict[int, str], dict[str, int]]:
        table = _bytes_to_unicode()
        return table, {char: byte for byte, char in table.items()}

    def _id_to_token(self, index: int) -> str:
        if index in self._special_by_id:
            return self._special_by_id[index]
        table, _ = self._byte_table
        return "".join(table[b] for b in self.model.decode_single_token_bytes(index))

    def _token_to_id(self, token: str) -> int | None:
        if token in self.special_tokens:
            return self.special_tokens[token]
        _, inverse = self._byte_table
        if not all(char in inverse for char in token):
            return None
        return self.mergeable_ranks.get(bytes(inverse[char] for char in token))

    def get_vocab(self) -> dict[str, int]:
        return {self._id_to_token(i): i for i in range(len(self))}

    # ---- encoding ---------------------------------------------------------------------------
    def _encode_text(self, text: str, allowed_special: AbstractSet[str], disallowed_special: Collection[str]) -> list[int]:
        if len(text) <= MAX_NO_WHITESPACES_CHARS:  # no run can be too long: one tiktoken call
            if self._special_prefix and self._special_prefix not in text:
                return self.model.encode_ordinary(text)
            return self.model.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        ids: list[int] = []
        for start in range(0, len(text), TIKTOKEN_MAX_ENCODE_CHARS):
            for piece in split_long_runs(text[start:start + TIKTOKEN_MAX_ENCODE_CHARS]):
                ids += self.model.encode(piece, allowed_special=allowed_special, disallowed_special=disallowed_special)
        return ids

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_text(text, self._all_special, ()) for text in texts]

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, *,
               bos: bool | None = None, eos: bool | None = None,
               allowed_special: Literal["all"] | AbstractSet[str] | None = None,
               disallowed_special: Literal["all"] | Collection[str] = (),
               truncation: bool | str | None = None, max_length: int | None = None) -> list[int]:
        """Two calling conventions. transformers': `encode(text)` parses special-token text as special and
        adds bos per add_bos_token. Meta's: `encode(text, bos=..., eos=...)` treats special-token text as
        plain text unless `allowed_special` names it, and raises for `disallowed_special` text."""
        if bos is None and eos is None:
            if allowed_special is not None or disallowed_special != ():
                raise TokenizerError("allowed_special/disallowed_special belong to Meta's calling convention; "
                                     "pass bos= and eos= too")
            return super().encode(text, text_pair, add_special_tokens, truncation=truncation, max_length=max_length)
        if not isinstance(text, str):
            raise TokenizerError(f"Llama3Tokenizer.encode takes one str, got {type(text).__name__}")
        allowed = self._all_special if allowed_special == "all" else (allowed_special or set())
        disallowed = (self._all_special - allowed) if disallowed_special == "all" else disallowed_special
        ids = self._encode_text(text, allowed, disallowed)
        return ([self.bos_token_id] if bos else []) + ids + ([self.eos_token_id] if eos else [])

    # ---- decoding ---------------------------------------------------------------------------
    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of `token_ids` (invalid UTF-8 becomes U+FFFD, as in tiktoken and tokenizers). The
        clean-up of spaces before punctuation is never applied: transformers 5 skips it for BPE
        tokenizers, where it deletes real spaces (clean_up_tokenization_spaces is kept for round trips)."""
        ids = [self._checked_id(i) for i in as_id_list(token_ids)]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_by_id]
        return self.model.decode(ids)

    # ---- saving -----------------------------------------------------------------------------
    def save_vocabulary(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str]:
        """Write the tiktoken tokenizer.model (the original file, or the loaded ranks if it is gone)."""
        out = vocabulary_path(save_directory, filename_prefix, "tokenizer.model")
        return (copy_vocabulary_file(self.vocab_file, out, self._serialized_ranks),)

    def _serialized_ranks(self) -> bytes:
        ranked = sorted(self.mergeable_ranks.items(), key=lambda item: item[1])
        return b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranked)

    def _added_tokens_decoder(self) -> dict[int, dict[str, Any]]:
        """The 256 special-token names: transformers 5 appends them when it converts the tiktoken file."""
        return {index: added_token_entry(name) for name, index in self.special_tokens.items()}

    def _default_chat_template(self) -> str:
        return LLAMA3_CHAT_TEMPLATE
