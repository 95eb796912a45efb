"""Tokenizers on the `tokenizers` library. PreTrainedTokenizerFast runs any tokenizers.Tokenizer as
transformers 5's TokenizersBackend does (a tokenizer.json, or one built for a GGUF file);
LlamaTokenizerFast is loaded from tokenizer.json or converted from a sentencepiece tokenizer.model
exactly as transformers' LlamaConverter does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llama_shared.errors import TokenizerError
from llama_shared.files import open_regular
from llama_shared.tokenizers.backends import generate_merges
from llama_shared.tokenizers.base import (TokenizerBase, added_token_entry, as_id_list, copy_vocabulary_file,
                                          vocabulary_path, write_file)
from llama_shared.tokenizers.chat_template import LLAMA2_CHAT_TEMPLATE, LLAMA3_CHAT_TEMPLATE
from llama_shared.tokenizers.files import SPIECE_UNDERLINE, load_spm_proto

_SPM_USER_DEFINED, _SPM_CONTROL = 4, 3


def convert_spm_to_tokenizers(vocab_file: str | Path, legacy: bool = True, add_prefix_space: bool = True):
    """A tokenizers.Tokenizer equal to transformers' LlamaConverter output for this sentencepiece model."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    proto = load_spm_proto(vocab_file)
    pieces = list(proto.pieces)
    vocab_scores = [(p.piece, 0.0 if i < 3 else p.score) for i, p in enumerate(pieces)]
    if proto.trainer_spec.model_type == 2:  # BPE
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        merges = generate_merges(vocab, dict(vocab_scores))
        bpe_vocab = {piece: i for i, (piece, _) in enumerate(vocab_scores)}
        model = BPE(bpe_vocab, merges, unk_token=proto.trainer_spec.unk_piece, fuse_unk=True, byte_fallback=True)
    elif proto.trainer_spec.model_type == 1:  # Unigram
        model = Unigram(vocab_scores, unk_id=0, byte_fallback=True)
    else:
        raise TokenizerError(f"sentencepiece model {vocab_file} has model_type {proto.trainer_spec.model_type}; "
                             "expected BPE (2) or Unigram (1)")
    tokenizer = Tokenizer(model)
    tokenizer.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == _SPM_CONTROL)
                          for p in pieces if p.type in (_SPM_CONTROL, _SPM_USER_DEFINED)])
    if legacy:
        steps = [normalizers.Prepend(prepend=SPIECE_UNDERLINE)] if add_prefix_space else []
        tokenizer.normalizer = normalizers.Sequence(steps + [normalizers.Replace(pattern=" ", content=SPIECE_UNDERLINE)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=SPIECE_UNDERLINE, prepend_scheme="first" if add_prefix_space else "never", split=False)
    steps = [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


class TokenizersBackedBase(TokenizerBase):
    """What every tokenizer on a tokenizers.Tokenizer (self._tokenizer) reads from it alike:
    vocabulary, id lookups, plain encoding and saving; subclasses build the Tokenizer and its post-processor."""

    model_files = ("tokenizer.json",)

    def _special_flags_changed(self) -> None:
        self.update_post_processor()

    @property
    def backend_tokenizer(self):
        """The underlying tokenizers.Tokenizer."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def _token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def _id_to_token(self, index: int) -> str:
        return self._tokenizer.id_to_token(index)

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def save_vocabulary(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write tokenizer.json (with the post-processor of the current add_bos/add_eos settings)."""
        out = vocabulary_path(save_directory, filename_prefix, "tokenizer.json")
        return (write_file(out, self._tokenizer.to_str(pretty=True)),)

    def _added_tokens_decoder(self) -> dict[int, dict[str, Any]]:
        return {index: added_token_entry(token.content, token.special, token.normalized, token.lstrip, token.rstrip,
                                         token.single_word)
                for index, token in self._tokenizer.get_added_tokens_decoder().items()}


class LlamaTokenizerFast(TokenizersBackedBase):
    """Llama tokenizer on the Rust `tokenizers` library, id for id with transformers' LlamaTokenizerFast.

    Built from `tokenizer_file` (tokenizer.json) when given, else converted from `vocab_file`.
    The post-processor is rewritten from add_bos_token/add_eos_token whenever either changes.
    add_prefix_space=None keeps a tokenizer.json as written and means True when converting.
    """

    padding_side = "left"
    model_files = ("tokenizer.json", "tokenizer.model")

    def __init__(self, vocab_file: str | Path | None = None, tokenizer_file: str | Path | None = None,
                 clean_up_tokenization_spaces: bool = False, unk_token: str | None = "<unk>",
                 bos_token: str | None = "<s>", eos_token: str | None = "</s>", pad_token: str | None = None,
                 add_bos_token: bool = True, add_eos_token: bool = False, legacy: bool | None = None,
                 add_prefix_space: bool | None = None, chat_template: str | None = None,
                 model_max_length: int | None = None, padding_side: str | None = None,
                 truncation_side: str | None = None) -> None:
        from tokenizers import AddedToken

        self.legacy = True if legacy is None else bool(legacy)
        self.add_prefix_space = add_prefix_space
        self.vocab_file = None if vocab_file is None else str(vocab_file)
        if tokenizer_file is not None and (add_prefix_space is None or vocab_file is None):
            self._tokenizer = _load_tokenizer_json(tokenizer_file)
        elif vocab_file is not None:
            self._tokenizer = convert_spm_to_tokenizers(vocab_file, self.legacy, add_prefix_space is not False)
        else:
            raise TokenizerError("LlamaTokenizerFast needs tokenizer_file (tokenizer.json) or vocab_file (tokenizer.model)")
        special = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token, "pad_token": pad_token}
        self._tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                            for t in dict.fromkeys(special.values()) if t is not None])
        self._init_common(special_tokens=special, add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                          clean_up_tokenization_spaces=clean_up_tokenization_spaces, chat_template=chat_template,
                          model_max_length=model_max_length, padding_side=padding_side,
                          truncation_side=truncation_side)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """Write a TemplateProcessing for the current bos/eos settings, as transformers does."""
        from tokenizers import processors

        bos, eos = self.bos_token, self.eos_token
        if bos is None and self.add_bos_token:
            raise TokenizerError("add_bos_token=True but bos_token is None")
        if eos is None and self.add_eos_token:
            raise TokenizerError("add_eos_token=True but eos_token is None")
        single = f"{(bos + ':0 ') if self.add_bos_token else ''}$A:0{(' ' + eos + ':0') if self.add_eos_token else ''}"
        pair = (f"{single}{(' ' + bos + ':1') if self.add_bos_token else ''} $B:1"
                f"{(' ' + eos + ':1') if self.add_eos_token else ''}")
        special_tokens = []
        if self.add_bos_token:
            special_tokens.append((bos, self.bos_token_id))
        if self.add_eos_token:
            special_tokens.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=special_tokens)

    def _encode_rows(self, texts, pairs, add_special_tokens, truncation, max_length):
        if pairs is None and self._truncation_limit(truncation, max_length) is None:
            # The post-processor already holds bos/eos: one Rust call does the whole batch.
            encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
            return [e.ids for e in encodings]
        return super()._encode_rows(texts, pairs, add_special_tokens, truncation, max_length)

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of `token_ids` through the tokenizer.json decoder."""
        ids = [self._checked_id(i) for i in as_id_list(token_ids)]
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return self._maybe_clean_up(text, clean_up_tokenization_spaces)

    def save_vocabulary(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write tokenizer.json, and tokenizer.model when this tokenizer was converted from one."""
        written = super().save_vocabulary(save_directory, filename_prefix)
        if self.vocab_file is None or not Path(self.vocab_file).is_file():
            return written
        out = vocabulary_path(save_directory, filename_prefix, "tokenizer.model")
        return (*written, copy_vocabulary_file(self.vocab_file, out))

    def _class_settings(self) -> dict[str, Any]:
        return {"legacy": self.legacy, "add_prefix_space": self.add_prefix_space}

    def _default_chat_template(self) -> str:
        return LLAMA3_CHAT_TEMPLATE if self._token_to_id("<|start_header_id|>") is not None else LLAMA2_CHAT_TEMPLATE


def _load_tokenizer_json(path: str | Path):
    from tokenizers import Tokenizer

    path = Path(path)
    open_regular(path, TokenizerError).close()  # missing, or a FIFO or device that would block the reader
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unparsable files
        raise TokenizerError(f"tokenizer.json at {path} is not a valid tokenizers file: {exc}") from None


class PreTrainedTokenizerFast(TokenizersBackedBase):
    """Any tokenizers.Tokenizer run as transformers 5's TokenizersBackend (PreTrainedTokenizerFast) runs it.

    The tokenizer's own post-processor places bos/eos unless add_bos_token or add_eos_token is
    given (or it has none), in which case a TemplateProcessing for those flags replaces it.
    added_tokens (tokenizer_config's added_tokens_decoder, in id order) and then the named special
    tokens are added as transformers adds them. Encoding, truncation and decoding all run in the
    Rust tokenizer.
    """

    padding_side = "right"

    def __init__(self, tokenizer_object: Any = None, *, tokenizer_file: str | Path | None = None,
                 bos_token: Any = None, eos_token: Any = None, unk_token: Any = None, pad_token: Any = None,
                 add_bos_token: bool | None = None, add_eos_token: bool | None = None,
                 added_tokens: list[dict[str, Any]] | tuple = (), clean_up_tokenization_spaces: bool = False,
                 chat_template: str | None = None, model_max_length: int | None = None,
                 padding_side: str | None = None, truncation_side: str | None = None) -> None:
        from tokenizers import Tokenizer

        if tokenizer_object is not None:
            self._tokenizer = Tokenizer.from_str(tokenizer_object.to_str())
        elif tokenizer_file is not None:
            self._tokenizer = _load_tokenizer_json(tokenizer_file)
        else:
            raise TokenizerError("PreTrainedTokenizerFast needs a tokenizer_object or a tokenizer_file (tokenizer.json)")
        special = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token, "pad_token": pad_token}
        self._tokenizer.add_tokens([_added_token(entry) for entry in added_tokens])
        present = {token.content for token in self._tokenizer.get_added_tokens_decoder().values()}
        self._tokenizer.add_tokens([_added_token(value, special=True) for value in special.values()
                                    if value is not None and _content(value) not in present])
        explicit = add_bos_token is not None or add_eos_token is not None
        flags = (bool(add_bos_token), bool(add_eos_token)) if explicit else \
            _template_flags(self._tokenizer, _content(bos_token), _content(eos_token))
        self._init_common(special_tokens={k: _content(v) for k, v in special.items()}, add_bos_token=flags[0],
                          add_eos_token=flags[1], clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                          chat_template=chat_template, model_max_length=model_max_length, padding_side=padding_side,
                          truncation_side=truncation_side)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        if explicit or self._tokenizer.post_processor is None:
            self.update_post_processor()

    def update_post_processor(self) -> None:
        """A TemplateProcessing for add_bos_token/add_eos_token, as transformers writes it (a flag
        whose token is unset is dropped)."""
        from tokenizers import processors

        bos, eos = self.bos_token, self.eos_token
        self._add_bos_token = self._add_bos_token and bos is not None
        self._add_eos_token = self._add_eos_token and eos is not None
        single = f"{(bos + ':0 ') if self.add_bos_token else ''}$A:0{(' ' + eos + ':0') if self.add_eos_token else ''}"
        pair = (f"{single}{(' ' + bos + ':1') if self.add_bos_token else ''} $B:1"
                f"{(' ' + eos + ':1') if self.add_eos_token else ''}")
        special_tokens = [(bos, self.bos_token_id)] if self.add_bos_token else []
        special_tokens += [(eos, self.eos_token_id)] if self.add_eos_token else []
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                      special_tokens=special_tokens)

    def _encode_rows(self, texts, pairs, add_special_tokens, truncation, max_length):
        for value in texts + (pairs or []):
            if not isinstance(value, str):
                raise TokenizerError(f"tokenizer input must be str or a list of str, got {type(value).__name__}")
        limit = self._truncation_limit(truncation, max_length)
        if limit is not None:
            self._tokenizer.enable_truncation(limit, strategy="longest_first", direction=self.truncation_side)
        try:
            inputs = texts if pairs is None else list(zip(texts, pairs))
            return [e.ids for e in self._tokenizer.encode_batch_fast(inputs, add_special_tokens=add_special_tokens)]
        finally:
            self._tokenizer.no_truncation()

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of `token_ids` through the tokenizer's decoder. As in transformers 5, the clean-up of
        spaces before punctuation is skipped for a BPE model, where it deletes real spaces."""
        ids = [self._checked_id(i) for i in as_id_list(token_ids)]
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        if type(self._tokenizer.model).__name__ == "BPE":
            return text
        return self._maybe_clean_up(text, clean_up_tokenization_spaces)

    def _default_chat_template(self) -> str:
        raise TokenizerError("this tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja); "
                             "pass chat_template=...")


def _content(token: Any) -> str | None:
    """A special token's text, whether given as a string or as tokenizer_config's AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def _added_token(entry: Any, special: bool | None = None):
    """A tokenizers.AddedToken from a string or an added_tokens_decoder entry (its flags kept)."""
    from tokenizers import AddedToken

    if isinstance(entry, str):
        return AddedToken(entry, special=True if special is None else special)
    flags = {key: entry[key] for key in ("single_word", "lstrip", "rstrip", "normalized", "special") if key in entry}
    return AddedToken(entry["content"], **flags)


def _template_flags(tokenizer: Any, bos: str | None, eos: str | None) -> tuple[bool, bool]:
    """(add_bos, add_eos) as a tokenizer's TemplateProcessing places them (also inside a Sequence)."""
    processor = json.loads(tokenizer.to_str()).get("post_processor") or {}
    steps = processor.get("processors", [processor]) if processor.get("type") == "Sequence" else [processor]
    for step in steps:
        if step.get("type") == "TemplateProcessing":
            single = [item.get("SpecialToken", {}).get("id") for item in step["single"]]
            return (bool(single) and bos is not None and single[0] == bos,
                    bool(single) and eos is not None and single[-1] == eos)
    return False, False
