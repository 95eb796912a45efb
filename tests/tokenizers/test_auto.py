"""AutoTokenizer on directories written by transformers, and chat templates against transformers'
apply_chat_template (Llama 2 [INST] and Llama 3 headers) and Meta's Llama 3 ChatFormat. A folder
with a tokenizer.json is held to transformers 5 (also tests/tokenizers/test_transformers5.py); the
sentencepiece classes, which transformers 5 no longer has, to 4.57.6 in its own process."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest

from llama_shared.errors import TokenizerError
from llama_shared.tokenizers import AutoTokenizer, Llama3Tokenizer, LlamaTokenizer, LlamaTokenizerFast
from llama_shared.tokenizers.fast import PreTrainedTokenizerFast
from llama_shared.tokenizers.llama3 import LLAMA3_SPECIAL_TOKENS

transformers = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", message=".*legacy.*")

TEXTS = ["Hello world", " Hello <s>. x", "<|begin_of_text|>hi<|eot_id|>", "生活的真谛是 🙂", "", "  two  spaces"]

# Written out here from the model cards (not imported from llama_shared) so the built-in formats
# are checked against an independent copy.
HUB_LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
    "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
HUB_LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": " What is 2+2? "},
     {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?\n"}],
    [{"role": "user", "content": "生活的真谛是 <s> 🙂"}, {"role": "assistant", "content": "  spaced  "},
     {"role": "user", "content": "ok"}],
]


def _same_ids(ours, ref, texts=TEXTS):
    for text in texts:
        assert ours.encode(text) == ref.encode(text), text
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids), text


@pytest.mark.parametrize("legacy", [True, False])
def test_auto_from_transformers_fast_dir(tmp_path, legacy, trained_spm_path, transformers_4):
    """A Llama 2 folder written by transformers 4.57.6 reads as transformers 5 reads it."""
    transformers_4("save_llama_tokenizer", vocab_file=str(trained_spm_path), destination=str(tmp_path),
                   kwargs={"legacy": legacy, "add_prefix_space": True, "add_eos_token": True})
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(ours, PreTrainedTokenizerFast) and ours.add_eos_token
    _same_ids(ours, ref)


@pytest.mark.parametrize("legacy", [True, False])
def test_auto_from_transformers_slow_dir(tmp_path, legacy, trained_spm_path, legacy_tokenizer):
    ref = legacy_tokenizer("LlamaTokenizer", str(trained_spm_path), legacy=legacy, pad_token="</s>")
    ref.save_pretrained(str(tmp_path))
    assert not (tmp_path / "tokenizer.json").exists()
    slow = AutoTokenizer.from_pretrained(tmp_path, use_fast=False)
    fast = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(slow, LlamaTokenizer) and isinstance(fast, LlamaTokenizerFast)
    _same_ids(slow, legacy_tokenizer("AutoTokenizer.from_pretrained", str(tmp_path), use_fast=False))
    _same_ids(fast, legacy_tokenizer("AutoTokenizer.from_pretrained", str(tmp_path)))
    assert slow.pad_token_id == fast.pad_token_id == ref.pad_token_id


def test_auto_llama3_tokenizer_json_and_meta_dir(tmp_path, llama3_tiktoken_path, hf_llama3_fast):
    ref = hf_llama3_fast(tuple(LLAMA3_SPECIAL_TOKENS["3.1"]))
    ref.chat_template = HUB_LLAMA3_TEMPLATE
    hf_dir = tmp_path / "hf"
    ref.save_pretrained(hf_dir)
    ref = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = AutoTokenizer.from_pretrained(hf_dir)
    _same_ids(ours, ref)
    assert ours.padding_side == ref.padding_side
    conv = CONVERSATIONS[1]
    assert ours.apply_chat_template(conv, add_generation_prompt=True) == ref.apply_chat_template(
        conv, add_generation_prompt=True, return_dict=False)

    meta_dir = tmp_path / "meta" / "original"
    meta_dir.mkdir(parents=True)
    shutil.copy(llama3_tiktoken_path, meta_dir / "tokenizer.model")
    meta_tok = AutoTokenizer.from_pretrained(meta_dir.parent)
    assert isinstance(meta_tok, Llama3Tokenizer)
    _same_ids(meta_tok, ref, [t for t in TEXTS if t.strip() == t])  # HF cleans up spaces on decode, Meta not


def test_auto_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json and no tokenizer.model"):
        AutoTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\xff\xff garbage")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="not a directory"):
        AutoTokenizer.from_pretrained(tmp_path / "missing" / "deeper")


@pytest.mark.parametrize("conversation", CONVERSATIONS[:2])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_llama2_chat_matches_transformers(conversation, generation_prompt, trained_spm_path, legacy_tokenizer):
    path = str(trained_spm_path)
    ref = legacy_tokenizer("LlamaTokenizer", path, legacy=False)
    ref.chat_template = HUB_LLAMA2_TEMPLATE
    for ours in (LlamaTokenizer(path, legacy=False), LlamaTokenizerFast(path, legacy=False)):
        want = ref.apply_chat_template(conversation, add_generation_prompt=generation_prompt)
        assert ours.apply_chat_template(conversation, add_generation_prompt=generation_prompt) == want
        assert ours.apply_chat_template(conversation, tokenize=False) == ref.apply_chat_template(
            conversation, tokenize=False)


def test_llama2_chat_rejects_bad_role_order(trained_spm_path):
    ours = LlamaTokenizer(str(trained_spm_path))
    with pytest.raises(TokenizerError, match="alternate"):
        ours.apply_chat_template([{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_llama3_chat_matches_transformers(conversation, generation_prompt, llama3_tiktoken_path, hf_llama3_fast):
    ref = hf_llama3_fast(tuple(LLAMA3_SPECIAL_TOKENS["3.1"]))
    ours = Llama3Tokenizer(llama3_tiktoken_path)
    want = ref.apply_chat_template(conversation, add_generation_prompt=generation_prompt,
                                   chat_template=HUB_LLAMA3_TEMPLATE, return_dict=False)
    assert ours.apply_chat_template(conversation, add_generation_prompt=generation_prompt) == want


def test_llama3_chat_matches_meta_chat_format(llama3_tiktoken_path):
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    chat = ChatFormat(Tokenizer(llama3_tiktoken_path))
    ours = Llama3Tokenizer(llama3_tiktoken_path)
    for conversation in CONVERSATIONS:
        stripped = [{"role": m["role"], "content": m["content"].strip()} for m in conversation]
        want = chat.encode_dialog_prompt([RawMessage(**m) for m in stripped]).tokens
        assert ours.apply_chat_template(stripped, add_generation_prompt=True) == want


@pytest.mark.parametrize("field, value, expected", [
    ("bos_token", 5, "a string, an object with a string 'content', or null"),
    ("pad_token", {"content": 7}, "a string, an object with a string 'content', or null"),
    ("eos_token", ["</s>"], "a string, an object with a string 'content', or null"),
    ("add_bos_token", "yes", "true, false or null"),
    ("legacy", "no", "true, false or null"),
    ("model_max_length", "x", "a positive number"),
    ("model_max_length", float("nan"), "a positive number"),
    ("added_tokens_decoder", {"x": 1}, "an object keyed by token ids"),
    ("chat_template", 5, "a string"),
    ("chat_template", [1, 2], "a string or a list of {'name', 'template'} objects with a 'default' one"),
])
def test_odd_tokenizer_config_field_names_file_and_field(tmp_path, trained_spm_path, field, value, expected):
    """Issue 18: these were raw TypeError and ValueError tracebacks, or silently used."""
    shutil.copy(trained_spm_path, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({field: value}))
    with pytest.raises(TokenizerError, match=rf"tokenizer_config\.json: field '{field}' must be {re.escape(expected)}"):
        AutoTokenizer.from_pretrained(tmp_path)


def test_named_chat_templates_use_the_default_one(tmp_path, trained_spm_path):
    """transformers' list form of several named templates: the one named "default" applies."""
    shutil.copy(trained_spm_path, tmp_path / "tokenizer.model")
    templates = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ messages[0].content }}!"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi!"
