"""Llama3Tokenizer against Meta's llama-models Tokenizer (tiktoken) and transformers'
PreTrainedTokenizerFast converted from the same tokenizer.model shipped in llama-models."""

from __future__ import annotations

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings

from llama_shared.errors import TokenizerError
from llama_shared.tokenizers import Llama3Tokenizer, LlamaTokenizer
from llama_shared.tokenizers.llama3 import LLAMA3_SPECIAL_TOKENS, split_long_runs
from tests.cases import TRICKY_PIECES, tricky_text

HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CASES = ["", "This is a test sentence.", " Hello", "Hello  world\n\n\n", "<|begin_of_text|>hi<|eot_id|>",
         "I'm can't WE'LL they'd", "12345678901", "生活的真谛是", "🙂👍🏽", "\t\r\n \u3000", "a" * 30, "a <|eot_id"]


@pytest.fixture(scope="module")
def meta(llama3_tiktoken_path):
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer(llama3_tiktoken_path)


@pytest.fixture(scope="module")
def ours(llama3_tiktoken_path):
    return Llama3Tokenizer(llama3_tiktoken_path, special_tokens="3.2")


@pytest.fixture(scope="module")
def hf(hf_llama3_fast):
    return hf_llama3_fast(tuple(LLAMA3_SPECIAL_TOKENS["3.1"]))


@pytest.fixture(scope="module")
def ours31(llama3_tiktoken_path):
    return Llama3Tokenizer(llama3_tiktoken_path, clean_up_tokenization_spaces=True)   # ignored, as in transformers 5


def test_special_token_tables(meta, ours, llama3_tiktoken_path):
    """ids 128000..128255 in each release; the 3.2 table is the one llama-models ships."""
    assert ours.special_tokens == meta.special_tokens
    assert len(ours) == meta.n_words == 128256
    for version, names in LLAMA3_SPECIAL_TOKENS.items():
        assert len(names) == len(set(names)) == 256, version
    v30, v31 = LLAMA3_SPECIAL_TOKENS["3.0"], LLAMA3_SPECIAL_TOKENS["3.1"]
    assert (v30.index("<|eot_id|>"), v30.index("<|start_header_id|>"), v30[8]) == (9, 6, "<|reserved_special_token_4|>")
    assert (v31.index("<|eom_id|>"), v31.index("<|python_tag|>"), v31.index("<|finetune_right_pad_id|>")) == (8, 10, 4)
    assert v30[-1] == "<|reserved_special_token_250|>" and v31[-1] == "<|reserved_special_token_247|>"
    tok30 = Llama3Tokenizer(llama3_tiktoken_path, special_tokens="3.0")
    assert tok30.encode("<|reserved_special_token_4|>", add_special_tokens=False) == [128008]
    assert tok30.decode([128008]) == "<|reserved_special_token_4|>"
    assert sorted(ours.stop_tokens) == sorted(meta.stop_tokens)


def _check_meta(meta, ours, text):
    for bos, eos in ((True, True), (False, False)):
        assert ours.encode(text, bos=bos, eos=eos) == meta.encode(text, bos=bos, eos=eos), text
    assert ours.encode(text, bos=False, eos=False, allowed_special="all") == meta.encode(
        text, bos=False, eos=False, allowed_special="all")
    ids = meta.encode(text, bos=True, eos=True)
    assert ours.decode(ids) == meta.decode(ids)
    assert ours.decode(ours.encode(text, bos=False, eos=False)) == text  # tiktoken round-trips all text


def _check_hf(hf, ours31, text):
    ids = hf.encode(text)
    assert ours31.encode(text) == ids, text
    assert ours31.tokenize(text) == hf.tokenize(text)
    for skip in (False, True):
        assert ours31.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert ours31.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("text", CASES + TRICKY_PIECES)
def test_cases_match_meta_and_transformers(meta, ours, hf, ours31, text):
    _check_meta(meta, ours, text)
    _check_hf(hf, ours31, text)


@settings(HYPOTHESIS)
@given(text=tricky_text())
def test_hypothesis_matches_meta_and_transformers(meta, ours, hf, ours31, text):
    _check_meta(meta, ours, text)
    _check_hf(hf, ours31, text)


def test_documented_meta_ids(meta, ours):
    """Meta's test_tokenizer.py figures, checked against the reference implementation itself."""
    text = "This is a test sentence."
    assert ours.encode(text, bos=True, eos=True) == meta.encode(text, bos=True, eos=True)
    assert ours.decode(ours.encode(text, bos=True, eos=True)) == "<|begin_of_text|>" + text + "<|end_of_text|>"


def test_special_text_is_plain_text_in_meta_convention(meta, ours):
    text = "a<|eot_id|>b"
    plain = ours.encode(text, bos=False, eos=False)
    assert 128009 not in plain and plain == meta.encode(text, bos=False, eos=False)
    assert 128009 in ours.encode(text)
    with pytest.raises(ValueError):
        ours.encode(text, bos=False, eos=False, disallowed_special="all")


def test_long_runs_are_chunked_like_meta(meta, ours):
    text = "x" * 60_000 + " " * 30_000 + "word " * 20 + "\n" * 26_000 + "end"
    assert ours.encode(text, bos=True, eos=False) == meta.encode(text, bos=True, eos=False)
    pieces = list(split_long_runs("ab   cdefg", 2))
    assert pieces == list(meta._split_whitespaces_or_nonwhitespaces("ab   cdefg", 2))


@settings(HYPOTHESIS)
@given(text=tricky_text())
def test_run_splitting_equals_meta_loop(meta, text):
    for limit in (1, 2, 3):
        assert list(split_long_runs(text, limit)) == list(meta._split_whitespaces_or_nonwhitespaces(text, limit))


def test_batch_matches_tiktoken_batch(ours):
    encoding = tiktoken.Encoding(name="ref", pat_str=ours.pat_str, mergeable_ranks=ours.mergeable_ranks,
                                 special_tokens={})
    texts = ["Hello world", "", "  spaced  out  ", "数字 123456"]
    assert ours(texts, add_special_tokens=False)["input_ids"] == encoding.encode_ordinary_batch(texts)


def test_wrong_kind_and_corrupt_files(tmp_path, trained_spm_path, llama3_tiktoken_path):
    with pytest.raises(TokenizerError, match="is a sentencepiece model.*use LlamaTokenizer"):
        Llama3Tokenizer(trained_spm_path)
    broken = tmp_path / "tokenizer.model"
    lines = llama3_tiktoken_path.read_bytes().splitlines()[:10]
    broken.write_bytes(b"\n".join(lines + [b"!!notbase64 10"]))
    with pytest.raises(TokenizerError, match="line 11"):
        Llama3Tokenizer(broken)
    with pytest.raises(TokenizerError, match="not one of the Llama 3 special tokens"):
        Llama3Tokenizer(llama3_tiktoken_path, eos_token="</s>")
    with pytest.raises(TokenizerError, match="tiktoken BPE file"):
        LlamaTokenizer(llama3_tiktoken_path)
