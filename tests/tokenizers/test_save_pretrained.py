"""save_pretrained for every tokenizer class, with default and changed settings: the saved folder,
loaded back by this package's AutoTokenizer and by transformers 5's, gives the original's ids,
decode, chat-template ids and settings on the tokenizer corpus. transformers 5 has no sentencepiece
class, so for LlamaTokenizer it is held to the LlamaTokenizerFast of the same settings (the
tokenizer.json it loads); it ignores add_bos_token/add_eos_token beside a tokenizer.json and takes
them from its post-processor, so those two are checked through the ids it gives."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import pytest

from llama_shared.errors import TokenizerError
from llama_shared.tokenizers import AutoTokenizer, Llama3Tokenizer, LlamaTokenizer, LlamaTokenizerFast
from llama_shared.tokenizers.fast import PreTrainedTokenizerFast
from tests.tokenizer_files import CHATML_SPECIALS, CHATML_TEMPLATE, CONVERSATIONS, byte_level_bpe_json, tokenizer_corpus

transformers = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", message=".*legacy.*")

CUSTOM_TEMPLATE = ("{% for message in messages %}{{ bos_token + '<' + message['role'] + '> ' + message['content'] "
                   "+ eos_token }}{% endfor %}{% if add_generation_prompt %}{{ '<assistant> ' }}{% endif %}")
CHANGED = {"padding_side": "left", "add_eos_token": True, "chat_template": CUSTOM_TEMPLATE, "model_max_length": 64,
           "truncation_side": "left"}


def _chatml(**settings):
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        Tokenizer.from_str(byte_level_bpe_json()), bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", added_tokens=CHATML_SPECIALS,
        **{"pad_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE, **settings})


@pytest.fixture(scope="module")
def originals(trained_spm_path, llama3_tiktoken_path, tmp_path_factory):
    """{name: tokenizer}: each class the project loads, as loaded and with changed settings (an added
    special token as pad, eos added, left padding, a custom chat template)."""
    json_folder = tmp_path_factory.mktemp("llama-json")
    LlamaTokenizerFast(trained_spm_path, legacy=False).save_vocabulary(json_folder)
    spm_changed = {**CHANGED, "pad_token": "<pad>", "legacy": False}
    return {
        "spm-slow": LlamaTokenizer(trained_spm_path),
        "spm-slow-changed": LlamaTokenizer(trained_spm_path, **spm_changed),
        "spm-fast": LlamaTokenizerFast(trained_spm_path),
        "spm-fast-changed": LlamaTokenizerFast(trained_spm_path, **{**spm_changed, "padding_side": "right"}),
        "json-fast": LlamaTokenizerFast(tokenizer_file=json_folder / "tokenizer.json", legacy=False),
        "llama3": Llama3Tokenizer(llama3_tiktoken_path),
        "llama3-changed": Llama3Tokenizer(llama3_tiktoken_path, eos_token="<|eot_id|>",
                                          pad_token="<|finetune_right_pad_id|>", **CHANGED),
        "chatml": _chatml(),
        "chatml-changed": _chatml(**CHANGED, pad_token="<pad>"),
    }


NAMES = ["spm-slow", "spm-slow-changed", "spm-fast", "spm-fast-changed", "json-fast", "llama3", "llama3-changed",
         "chatml", "chatml-changed"]


@pytest.fixture(scope="module")
def reloaded(originals, tmp_path_factory):
    """{name: (original, ours reloaded, transformers 5's reloaded, what transformers 5 is held to)}."""
    out = {}
    for name in NAMES:
        original = originals[name]
        folder = tmp_path_factory.mktemp(name)
        written = original.save_pretrained(folder / "saved")
        assert sorted(written) == sorted(str(p) for p in (folder / "saved").iterdir())
        ours = AutoTokenizer.from_pretrained(folder / "saved", use_fast=not isinstance(original, LlamaTokenizer))
        theirs = transformers.AutoTokenizer.from_pretrained(folder / "saved")
        expected = _fast_twin(original) if isinstance(original, LlamaTokenizer) else original
        out[name] = (original, ours, theirs, expected)
    return out


def _fast_twin(slow: LlamaTokenizer) -> LlamaTokenizerFast:
    return LlamaTokenizerFast(slow.vocab_file, legacy=slow.legacy, add_prefix_space=slow.add_prefix_space,
                              add_bos_token=slow.add_bos_token, add_eos_token=slow.add_eos_token,
                              bos_token=slow.bos_token, eos_token=slow.eos_token, unk_token=slow.unk_token,
                              pad_token=slow.pad_token, chat_template=slow.chat_template)


def test_changed_settings_change_behaviour(originals):
    """The changed tokenizers differ from the defaults where the tests look (else they prove nothing)."""
    for name in ("spm-slow", "spm-fast", "llama3", "chatml"):
        default, changed = originals[name], originals[name + "-changed"]
        assert changed("Hello")["input_ids"][-1] == changed.eos_token_id != default("Hello")["input_ids"][-1]
        assert changed.pad_token_id != default.pad_token_id
        assert changed.apply_chat_template(CONVERSATIONS[0]) != default.apply_chat_template(CONVERSATIONS[0])
    assert len(originals["spm-slow-changed"]) == len(originals["spm-slow"]) + 1  # <pad> added after the vocabulary
    assert len(originals["chatml-changed"]) == len(originals["chatml"]) + 1


@pytest.mark.parametrize("name", NAMES)
def test_ids_equal_after_reload(name, reloaded):
    original, ours, theirs, expected = reloaded[name]
    texts = tokenizer_corpus()
    for special in (True, False):
        ids = original(texts, add_special_tokens=special)["input_ids"]
        assert ours(texts, add_special_tokens=special)["input_ids"] == ids
        assert theirs(texts, add_special_tokens=special)["input_ids"] == expected(texts, add_special_tokens=special)["input_ids"]
    options = {"padding": original.pad_token is not None, "truncation": True, "max_length": 12}
    assert dict(ours(texts[:5], **options)) == dict(original(texts[:5], **options))


@pytest.mark.parametrize("name", NAMES)
def test_decode_equal_after_reload(name, reloaded):
    original, ours, theirs, expected = reloaded[name]
    for ids in original(tokenizer_corpus())["input_ids"]:
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == original.decode(ids, skip_special_tokens=skip)
            assert theirs.decode(ids, skip_special_tokens=skip) == expected.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_template_ids_equal_after_reload(name, generation_prompt, reloaded):
    original, ours, theirs, expected = reloaded[name]
    for conversation in CONVERSATIONS:
        ids = original.apply_chat_template(conversation, add_generation_prompt=generation_prompt)
        assert ours.apply_chat_template(conversation, add_generation_prompt=generation_prompt) == ids
        assert theirs.apply_chat_template(conversation, add_generation_prompt=generation_prompt, tokenize=True,
                                          return_dict=False) == expected.apply_chat_template(
            conversation, add_generation_prompt=generation_prompt)


@pytest.mark.parametrize("name", NAMES)
def test_settings_equal_after_reload(name, reloaded):
    original, ours, theirs, _ = reloaded[name]
    shared = ("bos_token", "eos_token", "unk_token", "pad_token", "bos_token_id", "eos_token_id", "unk_token_id",
              "pad_token_id", "padding_side", "truncation_side", "model_max_length", "clean_up_tokenization_spaces")
    for reload in (ours, theirs):
        for setting in shared:
            assert getattr(reload, setting) == getattr(original, setting), setting
        assert len(reload) == len(original)
        assert reload.chat_template == (original.chat_template or original._default_chat_template())
    assert (ours.add_bos_token, ours.add_eos_token) == (original.add_bos_token, original.add_eos_token)
    assert type(ours) is (LlamaTokenizer if isinstance(original, LlamaTokenizer) else
                          Llama3Tokenizer if isinstance(original, Llama3Tokenizer) else PreTrainedTokenizerFast)
    if isinstance(original, LlamaTokenizer):
        assert (ours.legacy, ours.add_prefix_space) == (original.legacy, original.add_prefix_space)


def test_tokenizer_config_holds_the_settings(originals, tmp_path):
    original = originals["spm-slow-changed"]
    written = original.save_pretrained(tmp_path, filename_prefix="x")
    assert [p.rsplit("/", 1)[1] for p in written] == ["x-tokenizer_config.json", "x-chat_template.jinja",
                                                      "x-tokenizer.model", "x-tokenizer.json"]
    config = json.loads((tmp_path / "x-tokenizer_config.json").read_text())
    assert config["pad_token"] == "<pad>" and config["add_eos_token"] is True and config["legacy"] is False
    assert config["padding_side"] == "left" and config["model_max_length"] == 64
    assert config["added_tokens_decoder"]["1000"]["content"] == "<pad>"
    assert "chat_template" not in config
    assert (tmp_path / "x-chat_template.jinja").read_text() == CUSTOM_TEMPLATE
    assert not (tmp_path / "special_tokens_map.json").exists()  # transformers 5 no longer writes it


def test_saving_into_a_model_folder_keeps_the_model_files(tmp_path):
    """The demo model's tokenizer saved into a copy of its own folder: model files byte for byte
    unchanged, and the tokenizer loads back the same."""
    from llama_twin import demo_model_dir

    folder = tmp_path / "demo"
    shutil.copytree(demo_model_dir(), folder)
    model_files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
                   if not p.name.startswith("tokenizer")}
    for use_fast in (True, False):
        original = AutoTokenizer.from_pretrained(demo_model_dir(), use_fast=use_fast)
        original.save_pretrained(folder)
        assert {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in model_files} == model_files
        reloaded = AutoTokenizer.from_pretrained(folder, use_fast=use_fast)
        texts = tokenizer_corpus()
        assert reloaded(texts)["input_ids"] == original(texts)["input_ids"]
        assert reloaded.apply_chat_template(CONVERSATIONS[1]) == original.apply_chat_template(CONVERSATIONS[1])
        assert (reloaded.pad_token, reloaded.padding_side, reloaded.model_max_length) == \
            (original.pad_token, original.padding_side, original.model_max_length)


def test_errors_name_the_file(originals, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(TokenizerError, match="a-file"):
        originals["chatml"].save_pretrained(target)
    folder = tmp_path / "with-json"
    originals["chatml"].save_pretrained(folder)
    with pytest.raises(TokenizerError, match="tokenizer.json"):  # Llama 3 writes none: the old one would win
        originals["llama3"].save_pretrained(folder)
