"""LlamaTokenizer: Llama 1/2's sentencepiece tokenizer with transformers' slow-tokenizer semantics
(legacy and non-legacy prefix handling, special tokens parsed out of the text)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llama_shared.errors import TokenizerError
from llama_shared.tokenizers.base import (TokenizerBase, added_token_entry, as_id_list, copy_vocabulary_file,
                                          vocabulary_path, write_file)
from llama_shared.tokenizers.chat_template import LLAMA2_CHAT_TEMPLATE
from llama_shared.tokenizers.files import SPIECE_UNDERLINE, load_spm_processor


class LlamaTokenizer(TokenizerBase):
    """Sentencepiece Llama tokenizer, id for id with transformers' LlamaTokenizer.

    legacy=None behaves as True (sentencepiece's dummy prefix also after special tokens);
    legacy=False prepends "▁" once (if add_prefix_space) and never after a special token.
    """

    padding_side = "right"
    model_files = ("tokenizer.model", "tokenizer.json")

    def __init__(self, vocab_file: str | Path, unk_token: str | None = "<unk>", bos_token: str | None = "<s>",
                 eos_token: str | None = "</s>", pad_token: str | None = None,
                 sp_model_kwargs: dict[str, Any] | None = None, add_bos_token: bool = True,
                 add_eos_token: bool = False, clean_up_tokenization_spaces: bool = False,
                 spaces_between_special_tokens: bool = False, legacy: bool | None = None,
                 add_prefix_space: bool = True, chat_template: str | None = None,
                 model_max_length: int | None = None, padding_side: str | None = None,
                 truncation_side: str | None = None) -> None:
        self.vocab_file = str(vocab_file)
        self.legacy = True if legacy is None else bool(legacy)
        self.add_prefix_space = add_prefix_space
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        # spaces_between_special_tokens only joins non-special added tokens, which Llama has none of;
        # it is kept so configs written by transformers load and save unchanged.
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.sp_model = load_spm_processor(self.vocab_file, None if self.legacy else False, **self.sp_model_kwargs)
        special = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token, "pad_token": pad_token}
        self._added = self._place_special_tokens(special)
        self._added_by_id = {index: token for token, index in self._added.items()}
        self._init_common(special_tokens=special, add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                          clean_up_tokenization_spaces=clean_up_tokenization_spaces, chat_template=chat_template,
                          model_max_length=model_max_length, padding_side=padding_side,
                          truncation_side=truncation_side)
        if add_bos_token and bos_token is None:
            raise TokenizerError("add_bos_token=True but bos_token is None")
        if add_eos_token and eos_token is None:
            raise TokenizerError("add_eos_token=True but eos_token is None")
        alternatives = sorted(self._added, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if alternatives else None
        self._unk_length = len(self.sp_model.encode(str(unk_token))) if unk_token is not None else 0

    def _place_special_tokens(self, special: dict[str, str | None]) -> dict[str, int]:
        """Special tokens keep their vocabulary id; ones missing from the vocabulary get new ids after it,
        as transformers' add_special_tokens does."""
        added: dict[str, int] = {}
        for token in special.values():
            if token is None or token in added:
                continue
            index = self.sp_model.piece_to_id(token)
            if self.sp_model.id_to_piece(index) != token:
                index = self.sp_model.get_piece_size() + sum(i >= self.sp_model.get_piece_size() for i in added.values())
            added[token] = index
        return added

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        return max([self.vocab_size - 1, *self._added.values()]) + 1

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self._added)
        return vocab

    def _token_to_id(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token]
        return self.sp_model.piece_to_id(token)

    def _id_to_token(self, index: int) -> str:
        if index in self._added_by_id:
            return self._added_by_id[index]
        return self.sp_model.id_to_piece(index)

    # ---- encoding ---------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text` exactly as transformers' LlamaTokenizer.tokenize gives them."""
        if not self.legacy and text:
            text = text.replace(SPIECE_UNDERLINE, " ")
            if self.add_prefix_space:
                text = SPIECE_UNDERLINE + text
        chunks = self._split_re.split(text) if self._split_re is not None else [text]
        tokens: list[str] = []
        for i, chunk in enumerate(chunks):
            if i % 2:
                tokens.append(chunk)
            elif chunk:
                tokens.extend(self._sp_tokenize(chunk))
        if (not self.legacy and len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE
                and tokens[1] in self._added):
            tokens = tokens[1:]
        return tokens

    def _sp_tokenize(self, text: str) -> list[str]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp_model.encode(text, out_type=str)
        # Without the dummy prefix sentencepiece would drop a leading "▁"; shield it behind the unk text.
        tokens = self.sp_model.encode(str(self.unk_token) + text, out_type=str)
        return tokens[self._unk_length:] if len(tokens) >= self._unk_length else tokens

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        return [[self._token_to_id(token) for token in self.tokenize(text)] for text in texts]

    # ---- decoding ---------------------------------------------------------------------------
    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of `token_ids` as transformers' LlamaTokenizer.decode gives it."""
        tokens = self.convert_ids_to_tokens(as_id_list(token_ids), skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string(tokens) if tokens else ""
        return self._maybe_clean_up(text, clean_up_tokenization_spaces)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join tokens; special tokens are copied verbatim, the rest decoded by sentencepiece."""
        tokens = list(tokens)
        if tokens[0].startswith(SPIECE_UNDERLINE) and self.add_prefix_space:
            tokens[0] = tokens[0][1:]
        special = set(self.all_special_tokens)
        pieces: list[str] = []
        out = ""
        prev_is_special = False
        for i, token in enumerate(tokens):
            if token in special:
                if not prev_is_special and i != 0 and self.legacy:
                    out += " "
                out += self.sp_model.decode(pieces) + token
                prev_is_special = True
                pieces = []
            else:
                if prev_is_special and i == 1 and self.add_prefix_space and not token.startswith(SPIECE_UNDERLINE):
                    out += " "
                pieces.append(token)
                prev_is_special = False
        return out + self.sp_model.decode(pieces)

    def save_vocabulary(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str]:
        """Write tokenizer.model (the original file, or the loaded proto if the file is gone)."""
        out = vocabulary_path(save_directory, filename_prefix, "tokenizer.model")
        return (copy_vocabulary_file(self.vocab_file, out, self.sp_model.serialized_model_proto),)

    def _save_model_files(self, directory: Path, filename_prefix: str | None) -> tuple[str, str]:
        """tokenizer.model, and the tokenizer.json LlamaTokenizerFast converts from it with these
        settings: transformers 5, which has no sentencepiece class, loads that one."""
        from llama_shared.tokenizers.fast import LlamaTokenizerFast

        (model_out,) = self.save_vocabulary(directory, filename_prefix)
        fast = LlamaTokenizerFast(model_out, legacy=self.legacy, add_prefix_space=self.add_prefix_space,
                                  add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token,
                                  **self._special_tokens)
        json_out = vocabulary_path(directory, filename_prefix, "tokenizer.json")
        return model_out, write_file(json_out, fast.backend_tokenizer.to_str(pretty=True))

    def _class_settings(self) -> dict[str, Any]:
        return {"legacy": self.legacy, "add_prefix_space": self.add_prefix_space}

    def _added_tokens_decoder(self) -> dict[int, dict[str, Any]]:
        return {index: added_token_entry(token) for token, index in self._added.items()}

    def _default_chat_template(self) -> str:
        return LLAMA2_CHAT_TEMPLATE
