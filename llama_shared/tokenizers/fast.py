"""LlamaTokenizerFast on the `tokenizers` library: loaded from tokenizer.json, or converted from a
sentencepiece tokenizer.model exactly as transformers' LlamaConverter does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_shared.errors import TokenizerError
from llama_shared.files import open_regular
from llama_shared.tokenizers.base import TokenizerBase, as_id_list
from llama_shared.tokenizers.chat_template import LLAMA2_CHAT_TEMPLATE, LLAMA3_CHAT_TEMPLATE
from llama_shared.tokenizers.files import SPIECE_UNDERLINE, load_spm_proto

_SPM_USER_DEFINED, _SPM_CONTROL = 4, 3


def _spm_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """transformers' generate_merges: every split of a piece into two vocabulary pieces, by score."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def convert_spm_to_tokenizers(vocab_file: str | Path, legacy: bool = True, add_prefix_space: bool = True):
    """A tokenizers.Tokenizer equal to transformers' LlamaConverter output for this sentencepiece model."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    proto = load_spm_proto(vocab_file)
    pieces = list(proto.pieces)
    vocab_scores = [(p.piece, 0.0 if i < 3 else p.score) for i, p in enumerate(pieces)]
    if proto.trainer_spec.model_type == 2:  # BPE
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        merges = _spm_merges(vocab, dict(vocab_scores))
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


class LlamaTokenizerFast(TokenizerBase):
    """Llama tokenizer on the Rust `tokenizers` library, id for id with transformers' LlamaTokenizerFast.

    Built from `tokenizer_file` (tokenizer.json) when given, else converted from `vocab_file`.
    The post-processor is rewritten from add_bos_token/add_eos_token whenever either changes.
    add_prefix_space=None keeps a tokenizer.json as written and means True when converting.
    """

    padding_side = "left"

    def __init__(self, vocab_file: str | Path | None = None, tokenizer_file: str | Path | None = None,
                 clean_up_tokenization_spaces: bool = False, unk_token: str | None = "<unk>",
                 bos_token: str | None = "<s>", eos_token: str | None = "</s>", pad_token: str | None = None,
                 add_bos_token: bool = True, add_eos_token: bool = False, legacy: bool | None = None,
                 add_prefix_space: bool | None = None, chat_template: str | None = None,
                 model_max_length: int | None = None, padding_side: str | None = None) -> None:
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
                          model_max_length=model_max_length, padding_side=padding_side)
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

    def save_vocabulary(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str]:
        """Write tokenizer.json (and tokenizer.model when this tokenizer was converted from one)."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise TokenizerError(f"save_vocabulary: {directory} is not a directory")
        prefix = filename_prefix + "-" if filename_prefix else ""
        out = directory / f"{prefix}tokenizer.json"
        self._tokenizer.save(str(out))
        written = [str(out)]
        if self.vocab_file is not None and Path(self.vocab_file).is_file():
            model_out = directory / f"{prefix}tokenizer.model"
            if Path(self.vocab_file).resolve() != model_out.resolve():
                model_out.write_bytes(Path(self.vocab_file).read_bytes())
            written.append(str(model_out))
        return tuple(written)

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
