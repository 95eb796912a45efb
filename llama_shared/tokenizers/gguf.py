"""The tokenizer a GGUF file carries in its metadata, built as transformers 5 builds it
(integrations/gguf): a sentencepiece-style "llama" vocabulary (merges from the file or recovered
from the scores) or a "gpt2" byte-level one (the split of its tokenizer.ggml.pre), the tokens the
file marks as control (special) and user-defined (whole), special ids, add_bos/add_eos and the chat
template."""

from __future__ import annotations

from typing import Any

from llama_shared.checkpoints.gguf import GGUFCheckpoint
from llama_shared.errors import TokenizerError
from llama_shared.tokenizers.backends import byte_level_backend, bytes_to_unicode, generate_merges, llama_backend
from llama_shared.tokenizers.fast import PreTrainedTokenizerFast

CONTROL, USER_DEFINED = 3, 4   # llama.cpp's token types

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre names whose split transformers sets in front of the byte-level step.
PRE_TOKENIZER_SPLITS = {name: _LLAMA3_SPLIT for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe",
                                                          "dbrx", "pixtral", "lfm2")}
# The class defaults transformers' builders bring (LlamaTokenizer's, GPT2Tokenizer's).
_BUILDER_SPECIALS = {"llama": ("<unk>", "<s>", "</s>"), "gpt2": ("<|endoftext|>",)}


def gguf_tokenizer(checkpoint: GGUFCheckpoint, **overrides: Any) -> PreTrainedTokenizerFast:
    """The tokenizer of a GGUF file, id for id with transformers 5's AutoTokenizer(..., gguf_file=...)."""
    from tokenizers import AddedToken, Regex, pre_tokenizers

    metadata, where = checkpoint.gguf_metadata, checkpoint.path
    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if kind not in _BUILDER_SPECIALS or not isinstance(tokens, list):
        raise TokenizerError(f"{where}: metadata field 'tokenizer.ggml.model' is {kind!r}; expected 'llama' or "
                             "'gpt2' with a tokenizer.ggml.tokens list")
    types = metadata.get("tokenizer.ggml.token_type") or []
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    if kind == "llama":
        vocab = {token: index for index, token in enumerate(tokens)}
        backend = llama_backend(vocab, _merges(metadata, vocab, where))
    else:
        # Tokens outside the byte alphabet are respelled byte by byte; a control token that needs it is
        # one llama.cpp mislabelled, and transformers skips it.
        vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
                 for i, t in enumerate(tokens)}
        backend = byte_level_backend(vocab, _merges(metadata, vocab, where))
    backend.add_tokens([AddedToken(token, special=True) for token in _BUILDER_SPECIALS[kind]])
    control = [AddedToken(token, normalized=False, special=True) for token, kind_ in zip(tokens, types)
               if kind_ == CONTROL and (kind == "llama" or set(token) <= alphabet)]
    backend.add_special_tokens(control)
    known = backend.get_vocab()
    backend.add_tokens([AddedToken(token, normalized=False, special=False) for token, kind_ in zip(tokens, types)
                        if kind_ == USER_DEFINED and token in known])
    split = PRE_TOKENIZER_SPLITS.get(metadata.get("tokenizer.ggml.pre"))
    if kind == "gpt2" and split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    add_bos = metadata.get("tokenizer.ggml.add_bos_token", True if kind == "llama" else None)
    kwargs = {"bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
              "unk_token": token("unknown_token_id"), "pad_token": token("padding_token_id"),
              "add_bos_token": add_bos, "add_eos_token": metadata.get("tokenizer.ggml.add_eos_token"),
              "chat_template": metadata.get("tokenizer.chat_template"), "padding_side": "left"}
    return PreTrainedTokenizerFast(backend, **{**kwargs, **overrides})


def _merges(metadata: dict[str, Any], vocab: dict[str, int], where: str) -> list[tuple[str, str]]:
    """The file's merges, or those its scored vocabulary implies (sentencepiece-style files)."""
    merges = metadata.get("tokenizer.ggml.merges")
    if merges is not None:
        return [tuple(merge.split(" ")) for merge in merges]
    scores = metadata.get("tokenizer.ggml.scores")
    if scores is None:
        raise TokenizerError(f"{where}: metadata has neither 'tokenizer.ggml.merges' nor 'tokenizer.ggml.scores'")
    return generate_merges(vocab, dict(zip(metadata["tokenizer.ggml.tokens"], scores)))
