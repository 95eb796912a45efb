"""LlamaTokenizer / LlamaTokenizerFast against transformers 4.57.6 (its slow sentencepiece
LlamaTokenizer and its LlamaConverter-based LlamaTokenizerFast, which transformers 5 no longer has;
run in the legacy process) and sentencepiece, on a Llama-style BPE model with byte fallback trained
by the test, for both legacy settings and add_prefix_space."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from llama_shared.errors import TokenizerError
from llama_shared.tokenizers import LlamaTokenizer, LlamaTokenizerFast
from tests.cases import TRICKY_PIECES, tricky_text

warnings.filterwarnings("ignore", message=".*legacy.*")

CASES = ["", " ", "  ", "Hello", " Hello", "Hi  Hello", "Hi   Hello", "Hello <s>.", "<s>", "<s>uns", "</s> x",
         "Hello\nworld\n\n", "生活的真谛是", "This is a test", "  leading and trailing  ", "a<unk>b",
         "▁Hey ▁▁there", "don't stop 12345", "🙂 emoji👍🏽", "e\u0301 \x00\x07 tab\there", "<s> <s>  </s>"]
SETTINGS = [(legacy, aps) for legacy in (True, False) for aps in (True, False)]
HYPOTHESIS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", params=SETTINGS, ids=lambda p: f"legacy={p[0]}-prefix={p[1]}")
def pair(request, trained_spm_path, legacy_tokenizer):
    """(ours_slow, hf_slow, ours_fast, hf_fast) for one legacy/add_prefix_space setting."""
    legacy, aps = request.param
    path = str(trained_spm_path)
    return (LlamaTokenizer(path, legacy=legacy, add_prefix_space=aps),
            legacy_tokenizer("LlamaTokenizer", path, legacy=legacy, add_prefix_space=aps),
            LlamaTokenizerFast(path, legacy=legacy, add_prefix_space=aps),
            legacy_tokenizer("LlamaTokenizerFast", vocab_file=path, from_slow=True, legacy=legacy,
                             add_prefix_space=aps))


def _check_text(pair, text: str) -> None:
    ours, ref, ours_fast, ref_fast = pair
    for mine, theirs in ((ours, ref), (ours_fast, ref_fast)):
        assert mine.tokenize(text) == theirs.tokenize(text), text
        for specials in (True, False):
            ids = theirs.encode(text, add_special_tokens=specials)
            assert mine.encode(text, add_special_tokens=specials) == ids, (type(mine).__name__, text)
            for skip in (False, True):
                assert mine.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
        plain = theirs.encode(text, add_special_tokens=False)
        if theirs.decode(plain) == text:
            assert mine.decode(mine.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("text", CASES + TRICKY_PIECES)
def test_cases_match_transformers(pair, text):
    _check_text(pair, text)


@HYPOTHESIS
@given(text=tricky_text())
def test_hypothesis_matches_transformers(pair, text):
    _check_text(pair, text)


def test_legacy_matches_raw_sentencepiece(trained_spm_path):
    """With legacy=True and no special tokens in the text, ids are sentencepiece's own."""
    import sentencepiece as spm

    path = str(trained_spm_path)
    sp = spm.SentencePieceProcessor(model_file=path)
    ours = LlamaTokenizer(path, legacy=True)
    for text in CASES + TRICKY_PIECES:
        if not any(t in text for t in ("<s>", "</s>", "<unk>")):
            assert ours.encode(text, add_special_tokens=False) == sp.encode(text), text


def test_batch_call_padding_truncation_and_tensors(trained_spm_path, legacy_tokenizer):
    path = str(trained_spm_path)
    texts = ["Hello world", "x", "", "a much longer sentence that will be truncated somewhere"]
    for ours, theirs in ((LlamaTokenizer(path, pad_token="<unk>", add_eos_token=True),
                          legacy_tokenizer("LlamaTokenizer", path, pad_token="<unk>", add_eos_token=True, legacy=True)),
                         (LlamaTokenizerFast(path, pad_token="<unk>", add_eos_token=True),
                          legacy_tokenizer("LlamaTokenizerFast", vocab_file=path, from_slow=True, pad_token="<unk>",
                                                          add_eos_token=True, legacy=True, add_prefix_space=True))):
        assert ours.padding_side == theirs.padding_side
        for kwargs in ({"padding": True}, {"padding": "max_length", "max_length": 12},
                       {"padding": True, "truncation": True, "max_length": 6, "padding_side": "left"},
                       {"padding": "longest", "pad_to_multiple_of": 8, "padding_side": "right"},
                       {"truncation": True, "max_length": 3, "add_special_tokens": False}):
            got, want = ours(texts, **kwargs), theirs(texts, **kwargs)
            assert got["input_ids"] == want["input_ids"], kwargs
            assert got["attention_mask"] == want["attention_mask"], kwargs
        got = ours(texts, padding=True, return_tensors="np")
        want = theirs(texts, padding=True, return_tensors="np")
        np.testing.assert_array_equal(got.input_ids, want["input_ids"])
        assert got.input_ids.dtype == np.int64
        single = ours("Hello world", return_tensors="np")
        assert single["input_ids"].shape == (1, len(theirs.encode("Hello world")))
        assert ours("Hello world", "x")["input_ids"] == theirs("Hello world", "x")["input_ids"]
        assert ours.batch_decode(want["input_ids"], skip_special_tokens=True) == theirs.batch_decode(
            want["input_ids"], skip_special_tokens=True)


def test_ragged_tensor_and_missing_pad_fail_clearly(trained_spm_path):
    ours = LlamaTokenizerFast(str(trained_spm_path))
    with pytest.raises(TokenizerError, match="padding=True"):
        ours(["a", "a longer text"], return_tensors="np")
    with pytest.raises(TokenizerError, match="pad_token"):
        ours(["a", "b"], padding=True)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        ours.decode([len(ours) + 5])


@pytest.mark.parametrize("bos,eos", [(True, False), (False, True), (True, True), (False, False)])
def test_special_token_helpers(bos, eos, trained_spm_path, legacy_tokenizer):
    path = str(trained_spm_path)
    ref = legacy_tokenizer("LlamaTokenizer", path, add_bos_token=bos, add_eos_token=eos, legacy=True)
    for ours in (LlamaTokenizer(path, add_bos_token=bos, add_eos_token=eos),
                 LlamaTokenizerFast(path, add_bos_token=bos, add_eos_token=eos)):
        a, b = [5, 6, 7], [8, 9]
        assert ours.build_inputs_with_special_tokens(a) == ref.build_inputs_with_special_tokens(a)
        assert ours.build_inputs_with_special_tokens(a, b) == ref.build_inputs_with_special_tokens(a, b)
        assert ours.get_special_tokens_mask(a, b) == ref.get_special_tokens_mask(a, b)
        full = ref.build_inputs_with_special_tokens(a)
        assert (ours.get_special_tokens_mask(full, already_has_special_tokens=True)
                == ref.get_special_tokens_mask(full, already_has_special_tokens=True))
        assert ours.create_token_type_ids_from_sequences(a, b) == ref.create_token_type_ids_from_sequences(a, b)
        assert ours.encode("Hello", "world") == ref.encode("Hello", "world")
        assert ours.convert_ids_to_tokens(full) == ref.convert_ids_to_tokens(full)
        assert ours.convert_tokens_to_ids(["<s>", "▁", "<0x41>"]) == ref.convert_tokens_to_ids(["<s>", "▁", "<0x41>"])


def test_fast_post_processor_follows_flags(trained_spm_path, legacy_tokenizer):
    """Setting add_bos/add_eos after construction rewrites the post-processor (transformers #23855)."""
    path = str(trained_spm_path)
    ours = LlamaTokenizerFast(path)
    ref = legacy_tokenizer("LlamaTokenizerFast", vocab_file=path, from_slow=True, legacy=True, add_prefix_space=True)
    for bos, eos in ((False, True), (True, True), (False, False)):
        ours.add_bos_token, ours.add_eos_token = bos, eos
        ref.add_bos_token, ref.add_eos_token = bos, eos
        assert ours.encode("A sample test") == ref.encode("A sample test")
        assert ours.encode("A sample", "test") == ref.encode("A sample", "test")
    with pytest.raises(TokenizerError, match="bos_token is None"):
        LlamaTokenizerFast(path, bos_token=None)


def test_new_pad_token_gets_the_next_id(trained_spm_path, legacy_tokenizer):
    path = str(trained_spm_path)
    ref = legacy_tokenizer("LlamaTokenizer", path, pad_token="<pad>", legacy=True)
    for ours in (LlamaTokenizer(path, pad_token="<pad>"), LlamaTokenizerFast(path, pad_token="<pad>")):
        assert ours.pad_token_id == ref.pad_token_id == ref.vocab_size
        assert len(ours) == len(ref)
        assert ours.encode("x <pad> y") == ref.encode("x <pad> y")


def test_save_vocabulary_round_trips(tmp_path, trained_spm_path):
    path = str(trained_spm_path)
    slow = LlamaTokenizer(path, legacy=False)
    (saved,) = slow.save_vocabulary(tmp_path)
    assert open(saved, "rb").read() == open(path, "rb").read()
    fast = LlamaTokenizerFast(path, legacy=False, add_prefix_space=False)
    written = fast.save_vocabulary(tmp_path, filename_prefix="x")
    again = LlamaTokenizerFast(tokenizer_file=written[0])
    for text in CASES:
        assert again.encode(text) == fast.encode(text)


def test_wrong_kind_and_corrupt_files_fail_clearly(tmp_path, trained_spm_path, llama3_tiktoken_path):
    with pytest.raises(TokenizerError, match="tiktoken BPE file, not a sentencepiece model; use Llama3Tokenizer"):
        LlamaTokenizer(llama3_tiktoken_path)
    with pytest.raises(TokenizerError, match="tiktoken BPE file"):
        LlamaTokenizerFast(llama3_tiktoken_path)
    corrupt = tmp_path / "tokenizer.model"
    corrupt.write_bytes(trained_spm_path.read_bytes()[:1000])
    with pytest.raises(TokenizerError, match=str(corrupt)):
        LlamaTokenizer(corrupt)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        LlamaTokenizerFast(tokenizer_file=bad_json)


@pytest.mark.parametrize("framework", ["jax", "pt"])
def test_return_tensors_for_each_backend(framework, trained_spm_path):
    module = pytest.importorskip("jax.numpy" if framework == "jax" else "torch")
    ours = LlamaTokenizerFast(str(trained_spm_path), pad_token="<unk>")
    out = ours(["Hello world", "x"], padding=True, return_tensors=framework)
    want = ours(["Hello world", "x"], padding=True)
    assert isinstance(out.input_ids, module.ndarray if framework == "jax" else module.Tensor)
    assert out.input_ids.tolist() == want["input_ids"] and out.attention_mask.tolist() == want["attention_mask"]


def test_importing_tokenizers_loads_neither_jax_nor_torch():
    import subprocess
    import sys

    code = ("import sys, llama_shared.tokenizers; "
            "print(sorted(m for m in ('jax', 'torch', 'flax') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
