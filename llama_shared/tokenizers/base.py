"""What every llama-twin tokenizer shares: special tokens, `__call__` with padding/truncation/tensor
output, special-token layout helpers, decode helpers, chat templates and save_pretrained. Subclasses
supply `_encode_plain`, `_token_to_id`, `_id_to_token`, `decode`, `save_vocabulary` and what their
tokenizer_config.json holds beyond the shared settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from llama_shared.errors import TokenizerError
from llama_shared.tokenizers.chat_template import render_chat_template
from llama_shared.tokenizers.tensors import RETURN_TENSORS, as_return_tensors

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when none is configured
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class BatchEncoding(dict):
    """Tokenizer output: a dict of `input_ids`/`attention_mask` that also allows attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def convert_to_tensors(self, return_tensors: str | None) -> "BatchEncoding":
        """Turn every value into a numpy ("np"), jax ("jax") or torch ("pt") int array, in place."""
        if return_tensors is None:
            return self
        if return_tensors not in RETURN_TENSORS:
            raise TokenizerError(f"return_tensors must be 'np', 'jax' or 'pt', got {return_tensors!r}")
        for key, value in self.items():
            lengths = {len(row) for row in value} if value and isinstance(value[0], list) else None
            if lengths is not None and len(lengths) > 1:
                raise TokenizerError(
                    f"cannot make a {return_tensors} array of {key}: rows have lengths {sorted(lengths)}; "
                    "pass padding=True or padding='max_length'"
                )
            self[key] = as_return_tensors(np.asarray(value, dtype=np.int64), return_tensors)
        return self


def clean_up_tokenization(text: str) -> str:
    """transformers' removal of spaces before punctuation and English contractions."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(old, new)
    return text


def as_id_list(token_ids: Any) -> list[int]:
    """Accept an int, a list, a numpy/jax/torch array; return a flat list of Python ints."""
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    if isinstance(token_ids, int):
        return [token_ids]
    return [int(i) for i in token_ids]


class TokenizerBase:
    """The transformers-compatible surface shared by the sentencepiece, tokenizers and tiktoken classes."""

    padding_side = "right"
    truncation_side = "right"

    def _init_common(self, *, special_tokens: dict[str, str | None], add_bos_token: bool, add_eos_token: bool,
                     clean_up_tokenization_spaces: bool, chat_template: str | None,
                     model_max_length: int | None, padding_side: str | None,
                     truncation_side: str | None = None) -> None:
        self._special_tokens = {name: special_tokens.get(name) for name in SPECIAL_TOKEN_NAMES}
        self._add_bos_token = add_bos_token
        self._add_eos_token = add_eos_token
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.chat_template = chat_template
        self.model_max_length = VERY_LARGE_INTEGER if model_max_length is None else int(model_max_length)
        if padding_side is not None:
            if padding_side not in ("left", "right"):
                raise TokenizerError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
            self.padding_side = padding_side
        if truncation_side is not None:
            if truncation_side not in ("left", "right"):
                raise TokenizerError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
            self.truncation_side = truncation_side

    # ---- subclass hooks ---------------------------------------------------------------------
    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text without bos/eos (special tokens written in the text still parsed)."""
        raise NotImplementedError

    def _token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def _id_to_token(self, index: int) -> str:
        raise NotImplementedError

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        raise NotImplementedError

    # ---- special tokens -----------------------------------------------------------------------
    @property
    def bos_token(self) -> str | None:
        return self._special_tokens["bos_token"]

    @property
    def eos_token(self) -> str | None:
        return self._special_tokens["eos_token"]

    @property
    def unk_token(self) -> str | None:
        return self._special_tokens["unk_token"]

    @property
    def pad_token(self) -> str | None:
        return self._special_tokens["pad_token"]

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    def _special_id(self, name: str) -> int | None:
        token = self._special_tokens[name]
        return None if token is None else self._token_to_id(token)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: token for name, token in self._special_tokens.items() if token is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys(self.special_tokens_map.values()))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._token_to_id(token) for token in self.all_special_tokens]

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = value
        self._special_flags_changed()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = value
        self._special_flags_changed()

    def _special_flags_changed(self) -> None:
        """Hook for the fast tokenizer, whose post-processor mirrors add_bos/add_eos."""

    # ---- token <-> id -------------------------------------------------------------------------
    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """One token or a list of tokens to ids (unknown tokens give the unk id, as in transformers)."""
        if isinstance(tokens, str):
            index = self._token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str | list[str]:
        """One id or a list of ids to tokens, optionally dropping special tokens."""
        if isinstance(ids, int):
            return self._id_to_token(self._checked_id(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token(self._checked_id(i)) for i in as_id_list(ids) if i not in special]

    def _checked_id(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise TokenizerError(f"token id {index} is outside the vocabulary of {len(self)} tokens")
        return index

    def tokenize(self, text: str) -> list[str]:
        """The text's tokens as strings, without bos/eos."""
        return [self._id_to_token(i) for i in self._encode_plain([text])[0]]

    # ---- special-token layout -----------------------------------------------------------------
    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        """`[bos]? + ids_0 + [eos]?` (+ `[bos]? + ids_1 + [eos]?` for a pair)."""
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        output = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            output += bos + list(token_ids_1) + eos
        return output

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 where build_inputs_with_special_tokens puts (or has put) a special token, else 0."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise TokenizerError("token_ids_1 must be None when already_has_special_tokens=True")
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int],
                                             token_ids_1: list[int] | None = None) -> list[int]:
        """0 for the first sequence with its special tokens, 1 for the second."""
        n_special = int(self.add_bos_token) + int(self.add_eos_token)
        output = [0] * (len(token_ids_0) + n_special)
        if token_ids_1 is not None:
            output += [1] * (len(token_ids_1) + n_special)
        return output

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return len(self.build_inputs_with_special_tokens([], [] if pair else None))

    # ---- encoding -----------------------------------------------------------------------------
    def __call__(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, *,
                 add_special_tokens: bool = True, padding: bool | str = False,
                 truncation: bool | str | None = None, max_length: int | None = None,
                 pad_to_multiple_of: int | None = None, padding_side: str | None = None,
                 return_tensors: str | None = None, return_attention_mask: bool = True) -> BatchEncoding:
        """Encode one text or a batch (optionally paired), with transformers' padding and truncation."""
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        pairs = None if text_pair is None else (list(text_pair) if batched else [text_pair])
        if pairs is not None and len(pairs) != len(texts):
            raise TokenizerError(f"got {len(texts)} texts but {len(pairs)} text_pair entries")
        rows = self._encode_rows(texts, pairs, add_special_tokens, truncation, max_length)
        masks = [[1] * len(row) for row in rows]
        rows, masks = self._pad(rows, masks, padding, max_length, pad_to_multiple_of, padding_side)
        out = BatchEncoding(input_ids=rows)
        if return_attention_mask:
            out["attention_mask"] = masks
        if not batched and return_tensors is None:
            out = BatchEncoding({key: value[0] for key, value in out.items()})
        return out.convert_to_tensors(return_tensors)

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, *,
               truncation: bool | str | None = None, max_length: int | None = None) -> list[int]:
        """The ids of one text (and optional pair), with bos/eos per add_bos_token/add_eos_token."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, truncation=truncation,
                    max_length=max_length, return_attention_mask=False)["input_ids"]

    def _encode_rows(self, texts: list[str], pairs: list[str] | None, add_special_tokens: bool,
                     truncation: bool | str | None, max_length: int | None) -> list[list[int]]:
        for value in texts + (pairs or []):
            if not isinstance(value, str):
                raise TokenizerError(f"tokenizer input must be str or a list of str, got {type(value).__name__}")
        firsts = self._encode_plain(texts)
        seconds = self._encode_plain(pairs) if pairs is not None else [None] * len(firsts)
        limit = self._truncation_limit(truncation, max_length)
        if limit is not None and pairs is not None:
            raise TokenizerError("truncation of sequence pairs is not supported; truncate each text separately")
        rows = []
        for first, second in zip(firsts, seconds):
            if limit is not None:
                keep = max(limit - (self.num_special_tokens_to_add() if add_special_tokens else 0), 0)
                if len(first) > keep:
                    first = first[:keep] if self.truncation_side == "right" else first[len(first) - keep:]
            if add_special_tokens:
                rows.append(self.build_inputs_with_special_tokens(first, second))
            else:
                rows.append(first + (second or []))
        return rows

    def _truncation_limit(self, truncation: bool | str | None, max_length: int | None) -> int | None:
        if truncation in (None, False, "do_not_truncate"):
            return None
        if truncation not in (True, "longest_first", "only_first"):
            raise TokenizerError(f"truncation must be True, False, 'longest_first' or 'only_first', got {truncation!r}")
        return self.model_max_length if max_length is None else max_length

    def _pad(self, rows: list[list[int]], masks: list[list[int]], padding: bool | str, max_length: int | None,
             pad_to_multiple_of: int | None, padding_side: str | None) -> tuple[list[list[int]], list[list[int]]]:
        if padding in (False, "do_not_pad"):
            return rows, masks
        if padding in (True, "longest"):
            target = max((len(row) for row in rows), default=0)
        elif padding == "max_length":
            target = self.model_max_length if max_length is None else max_length
        else:
            raise TokenizerError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if self.pad_token is None:
            raise TokenizerError(
                "asked to pad but the tokenizer has no pad_token; set one, e.g. pad_token=<a token of the vocabulary>"
            )
        if pad_to_multiple_of and target % pad_to_multiple_of:
            target += pad_to_multiple_of - target % pad_to_multiple_of
        side = padding_side or self.padding_side
        pad_id = self.pad_token_id
        padded_rows, padded_masks = [], []
        for row, mask in zip(rows, masks):
            n = max(target - len(row), 0)
            if side == "left":
                padded_rows.append([pad_id] * n + row)
                padded_masks.append([0] * n + mask)
            else:
                padded_rows.append(row + [pad_id] * n)
                padded_masks.append(mask + [0] * n)
        return padded_rows, padded_masks

    # ---- decoding -----------------------------------------------------------------------------
    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        """decode() for each row of a list of id lists or a 2-D array."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in sequences]

    def _maybe_clean_up(self, text: str, clean_up_tokenization_spaces: bool | None) -> str:
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    # ---- chat ---------------------------------------------------------------------------------
    def _default_chat_template(self) -> str:
        raise NotImplementedError

    def apply_chat_template(self, conversation: list[dict[str, str]], add_generation_prompt: bool = False,
                            tokenize: bool = True, chat_template: str | None = None,
                            return_tensors: str | None = None, **template_kwargs: Any) -> str | list[int] | Any:
        """Render messages with the jinja chat template (the built-in Llama format when the tokenizer
        carries none) and, unless tokenize=False, encode the result without adding bos/eos again."""
        template = chat_template or self.chat_template or self._default_chat_template()
        rendered = render_chat_template(
            template, conversation, add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens_map, **template_kwargs,
        )
        if not tokenize:
            return rendered
        ids = self._encode_plain([rendered])[0]
        if return_tensors is None:
            return ids
        return BatchEncoding(input_ids=[ids]).convert_to_tensors(return_tensors)["input_ids"]

    def __len__(self) -> int:
        raise NotImplementedError

    # ---- saving -------------------------------------------------------------------------------
    # tokenizer_config.json's tokenizer_class. transformers 5 takes the saved tokenizer.json (or
    # converts the tiktoken tokenizer.model) as written for this class; for "LlamaTokenizer" it would
    # rebuild the BPE from vocabulary and merges, which splits runs of spaces unlike sentencepiece.
    tokenizer_class_name = "TokenizersBackend"
    model_files: tuple[str, ...] = ()  # the file names _save_model_files writes

    def save_vocabulary(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str, ...]:
        raise NotImplementedError

    def _save_model_files(self, directory: Path, filename_prefix: str | None) -> tuple[str, ...]:
        """The files save_pretrained writes beside tokenizer_config.json: the vocabulary files."""
        return self.save_vocabulary(directory, filename_prefix)

    def _class_settings(self) -> dict[str, Any]:
        """tokenizer_config.json entries only this class has (legacy, add_prefix_space...)."""
        return {}

    def _added_tokens_decoder(self) -> dict[int, dict[str, Any]]:
        """{id: AddedToken fields} of the tokens added on top of the model's vocabulary, as
        tokenizer_config.json's added_tokens_decoder writes them."""
        return {}

    def tokenizer_config(self) -> dict[str, Any]:
        """The tokenizer_config.json save_pretrained writes: every setting that changes what the
        tokenizer does, so that this package and transformers 5 load the same tokenizer back."""
        config: dict[str, Any] = {
            "tokenizer_class": self.tokenizer_class_name, **self._special_tokens,
            "add_bos_token": self.add_bos_token, "add_eos_token": self.add_eos_token,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "model_max_length": self.model_max_length, "padding_side": self.padding_side,
            "truncation_side": self.truncation_side, **self._class_settings(),
        }
        decoder = self._added_tokens_decoder()
        if decoder:
            config["added_tokens_decoder"] = {str(index): decoder[index] for index in sorted(decoder)}
        return config

    def save_pretrained(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write the tokenizer into `save_directory` (created if missing) as transformers 5 does:
        tokenizer_config.json, chat_template.jinja and the vocabulary files; other files in the
        folder (a model's) are left alone. Returns the paths written.

        The chat template written is the one apply_chat_template uses, the built-in Llama format
        included, so transformers renders conversations as this tokenizer does."""
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise TokenizerError(f"save_pretrained: {directory} exists and is not a directory")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TokenizerError(f"save_pretrained: cannot create the folder {directory}: {exc}") from None
        prefix = filename_prefix + "-" if filename_prefix else ""
        stale = directory / f"{prefix}tokenizer.json"
        if "tokenizer.json" not in self.model_files and stale.exists():
            raise TokenizerError(f"save_pretrained: {stale} belongs to another tokenizer and would be loaded instead "
                                 f"of this {type(self).__name__}; remove it or save into another folder")
        text = json.dumps(self.tokenizer_config(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        written = [write_file(directory / f"{prefix}{TOKENIZER_CONFIG_FILE}", text)]
        template = self._saved_chat_template()
        if template is not None:
            written.append(write_file(directory / f"{prefix}{CHAT_TEMPLATE_FILE}", template))
        return (*written, *self._save_model_files(directory, filename_prefix))

    def _saved_chat_template(self) -> str | None:
        if self.chat_template is not None:
            return self.chat_template
        try:
            return self._default_chat_template()
        except TokenizerError:
            return None


def added_token_entry(content: str, special: bool = True, normalized: bool = False, lstrip: bool = False,
                      rstrip: bool = False, single_word: bool = False) -> dict[str, Any]:
    """One added_tokens_decoder value, with the fields transformers writes."""
    return {"content": content, "lstrip": lstrip, "normalized": normalized, "rstrip": rstrip,
            "single_word": single_word, "special": special}


def vocabulary_path(save_directory: str | Path, filename_prefix: str | None, name: str) -> Path:
    """Where save_vocabulary writes `name`, refusing a folder that does not exist."""
    directory = Path(save_directory)
    if not directory.is_dir():
        raise TokenizerError(f"save_vocabulary: {directory} is not a directory")
    return directory / f"{filename_prefix + '-' if filename_prefix else ''}{name}"


def write_file(path: Path, content: str | bytes) -> str:
    """Write text (UTF-8) or bytes to `path`; a failure names the file."""
    try:
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
    except OSError as exc:
        raise TokenizerError(f"cannot write the tokenizer file {path}: {exc}") from None
    return str(path)


def copy_vocabulary_file(source: str | Path, out: Path, serialized: Callable[[], bytes] | None = None) -> str:
    """Copy the vocabulary file the tokenizer was loaded from to `out` (nothing to do when it is
    `out` itself), or write `serialized()` when that file is gone."""
    source = Path(source)
    if source.is_file():
        if source.resolve() != out.resolve():
            write_file(out, source.read_bytes())
        return str(out)
    if serialized is None:
        raise TokenizerError(f"cannot save {out}: the vocabulary file {source} the tokenizer was loaded from is gone")
    return write_file(out, serialized())
