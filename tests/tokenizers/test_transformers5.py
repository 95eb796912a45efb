"""AutoTokenizer against transformers 5's AutoTokenizer on tokenizer.json folders of Llama-architecture
models: a SmolLM-style byte-level BPE with a ChatML template (tokenizer_class GPT2Tokenizer as its hub
folder says, and TokenizersBackend as transformers 5 saves it), Llama 2 folders written by
transformers 4.57.6 and re-saved by 5, and Llama 3's. Ids, decode, special tokens and chat-template
ids on a corpus of 240+ varied texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_shared.tokenizers import AutoTokenizer
from llama_shared.tokenizers.llama3 import LLAMA3_SPECIAL_TOKENS
from tests.tokenizer_files import CHATML_SPECIALS, CHATML_TEMPLATE, CONVERSATIONS, byte_level_bpe_json, tokenizer_corpus

transformers = pytest.importorskip("transformers")

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def llama_model_config(folder: Path) -> None:
    """The config.json of a Llama-architecture model beside the tokenizer files."""
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, transformers_4, trained_spm_path, hf_llama3_fast):
    """{name: folder} of the tokenizer folders under test."""
    from tokenizers import Tokenizer

    made = {}
    smollm = tmp_path_factory.mktemp("smollm-backend")
    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(byte_level_bpe_json()), bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|im_end|>", additional_special_tokens=CHATML_SPECIALS[3:])
    reference.chat_template = CHATML_TEMPLATE
    reference.save_pretrained(smollm)
    llama_model_config(smollm)
    made["smollm-TokenizersBackend"] = smollm
    gpt2 = tmp_path_factory.mktemp("smollm-gpt2")
    for name in ("tokenizer.json", "chat_template.jinja", "config.json"):
        if (smollm / name).exists():
            (gpt2 / name).write_bytes((smollm / name).read_bytes())
    config = json.loads((smollm / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="GPT2Tokenizer", add_prefix_space=False)
    (gpt2 / "tokenizer_config.json").write_text(json.dumps(config))
    made["smollm-GPT2Tokenizer"] = gpt2
    for legacy in (True, False):
        written_by_4 = tmp_path_factory.mktemp(f"llama2-legacy{legacy}-4x")
        transformers_4("save_llama_tokenizer", vocab_file=str(trained_spm_path), destination=str(written_by_4),
                       kwargs={"legacy": legacy, "pad_token": "<unk>", "chat_template": CHATML_TEMPLATE})
        llama_model_config(written_by_4)
        made[f"llama2-legacy{legacy}-4.x"] = written_by_4
        written_by_5 = tmp_path_factory.mktemp(f"llama2-legacy{legacy}-5x")
        transformers.AutoTokenizer.from_pretrained(written_by_4).save_pretrained(written_by_5)
        llama_model_config(written_by_5)
        made[f"llama2-legacy{legacy}-5.x"] = written_by_5
    llama3 = tmp_path_factory.mktemp("llama3")
    reference = hf_llama3_fast(tuple(LLAMA3_SPECIAL_TOKENS["3.1"]))
    reference.chat_template = LLAMA3_TEMPLATE
    reference.save_pretrained(llama3)
    llama_model_config(llama3)
    made["llama3"] = llama3
    return made


NAMES = ["smollm-TokenizersBackend", "smollm-GPT2Tokenizer", "llama2-legacyTrue-4.x", "llama2-legacyFalse-4.x",
         "llama2-legacyTrue-5.x", "llama2-legacyFalse-5.x", "llama3"]


@pytest.fixture(scope="module")
def pairs(folders):
    """{name: (ours, transformers 5's)} loaded once."""
    return {name: (AutoTokenizer.from_pretrained(folders[name]), transformers.AutoTokenizer.from_pretrained(folders[name]))
            for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_ids_and_special_tokens_equal_transformers_5(name, pairs):
    ours, reference = pairs[name]
    texts = tokenizer_corpus()
    assert len(texts) >= 200
    assert ours(texts)["input_ids"] == reference(texts)["input_ids"]
    assert ours(texts, add_special_tokens=False)["input_ids"] == reference(texts, add_special_tokens=False)["input_ids"]
    for role in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(ours, role) == getattr(reference, role), role
        assert getattr(ours, role + "_id") == getattr(reference, role + "_id"), role
    assert len(ours) == len(reference) and ours.padding_side == reference.padding_side


@pytest.mark.parametrize("name", NAMES)
def test_decode_equals_transformers_5(name, pairs):
    ours, reference = pairs[name]
    for text in tokenizer_corpus():
        ids = reference(text)["input_ids"]
        assert ours.decode(ids) == reference.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True), text


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_template_ids_equal_transformers_5(name, generation_prompt, pairs):
    ours, reference = pairs[name]
    for conversation in CONVERSATIONS:
        expected = reference.apply_chat_template(conversation, add_generation_prompt=generation_prompt,
                                                 tokenize=True, return_dict=False)
        assert ours.apply_chat_template(conversation, add_generation_prompt=generation_prompt) == expected


def test_byte_level_tokenizer_adds_no_bos(pairs):
    """The bug this fixes: a byte-level BPE whose post-processor adds nothing got Llama's BOS."""
    ours, _ = pairs["smollm-GPT2Tokenizer"]
    assert ours("Hello")["input_ids"] == ours("Hello", add_special_tokens=False)["input_ids"]
