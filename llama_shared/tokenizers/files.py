"""Reading tokenizer files: tell a sentencepiece model from a tiktoken BPE file, and fail with an
error naming the file and what was expected instead of producing wrong ids."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from llama_shared.errors import TokenizerError
from llama_shared.files import open_regular

SPIECE_UNDERLINE = "\u2581"
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+$")


def _read_bytes(path: str | Path) -> bytes:
    with open_regular(path, TokenizerError) as f:
        data = f.read()
    if not data:
        raise TokenizerError(f"tokenizer file {path} is empty; expected a sentencepiece model or a tiktoken BPE file")
    return data


def _looks_like_tiktoken(data: bytes) -> bool:
    first_line = data.split(b"\n", 1)[0].rstrip(b"\r")
    return bool(_TIKTOKEN_LINE.match(first_line))


def detect_kind(path: str | Path) -> str:
    """Return "tiktoken" or "sentencepiece" for a tokenizer.model file, or raise TokenizerError."""
    data = _read_bytes(path)
    if _looks_like_tiktoken(data):
        return "tiktoken"
    _parse_spm_proto(data, path)
    return "sentencepiece"


def _parse_spm_proto(data: bytes, path: str | Path):
    from sentencepiece import sentencepiece_model_pb2 as model_pb2
    from google.protobuf.message import DecodeError

    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise TokenizerError(
            f"tokenizer file {path} is not a sentencepiece model (protobuf parse failed: {exc}); "
            "expected a sentencepiece tokenizer.model (Llama 1/2) or a tiktoken BPE file (Llama 3)"
        ) from None
    if not proto.pieces:
        raise TokenizerError(f"tokenizer file {path} parsed as a sentencepiece model with no pieces; the file is corrupt")
    return proto


def load_spm_proto(path: str | Path):
    """Parse a sentencepiece ModelProto, refusing tiktoken files and corrupt data with a clear error."""
    data = _read_bytes(path)
    if _looks_like_tiktoken(data):
        raise TokenizerError(
            f"tokenizer.model at {path} is a tiktoken BPE file, not a sentencepiece model; use Llama3Tokenizer"
        )
    return _parse_spm_proto(data, path)


def load_spm_processor(path: str | Path, add_dummy_prefix: bool | None = None, **sp_model_kwargs):
    """A SentencePieceProcessor for `path`; `add_dummy_prefix=False` edits the proto as transformers'
    non-legacy LlamaTokenizer does."""
    import sentencepiece as spm

    proto = load_spm_proto(path)
    if add_dummy_prefix is not None:
        proto.normalizer_spec.add_dummy_prefix = add_dummy_prefix
    processor = spm.SentencePieceProcessor(**sp_model_kwargs)
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken BPE file ("base64 rank" per line), refusing sentencepiece models and corrupt lines."""
    data = _read_bytes(path)
    if not _looks_like_tiktoken(data):
        kind = "a sentencepiece model" if _is_spm(data) else "not a tiktoken BPE file"
        hint = "; use LlamaTokenizer or LlamaTokenizerFast" if kind.startswith("a sentencepiece") else ""
        raise TokenizerError(f"tokenizer.model at {path} is {kind}, expected 'base64-token rank' lines{hint}")
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        if not _TIKTOKEN_LINE.match(line):
            raise TokenizerError(f"tiktoken file {path} line {lineno} is not 'base64-token rank': {line[:60]!r}")
        token, rank = line.split(b" ")
        try:
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except binascii.Error as exc:
            raise TokenizerError(f"tiktoken file {path} line {lineno} has bad base64: {exc}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"tiktoken file {path}: ranks must be 0..{len(ranks) - 1} without gaps or repeats")
    return ranks


def _is_spm(data: bytes) -> bool:
    try:
        _parse_spm_proto(data, "")
    except TokenizerError:
        return False
    return True
