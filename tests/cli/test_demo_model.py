"""The embedded demo model: small enough to ship, loads in both backends, and both continue
"Once upon a time" greedily with the same English words."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from helpers_demo_words import COMMON_ENGLISH_WORDS
from llama_twin.demo import DEMO_FILES, demo_model_dir
from llama_shared.tokenizers import AutoTokenizer

PROMPT = "Once upon a time"
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def demo_dir():
    return demo_model_dir()


@pytest.fixture(scope="module")
def prompt_ids(demo_dir):
    return np.asarray([AutoTokenizer.from_pretrained(demo_dir).encode(PROMPT)])


def test_demo_folder_holds_the_model_and_fits_in_10_mb(demo_dir):
    names = set(os.listdir(demo_dir))
    assert set(DEMO_FILES) <= names
    assert "SOURCE.md" in names
    total = sum(os.path.getsize(os.path.join(demo_dir, name)) for name in names)
    assert total <= 10 * 1000 * 1000, f"the demo model folder holds {total} bytes"


@pytest.fixture(scope="module")
def torch_continuation(demo_dir, prompt_ids):
    import torch

    from llama_torch import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(demo_dir)
    return model.generate(torch.from_numpy(prompt_ids), max_new_tokens=NEW_TOKENS, do_sample=False).numpy()


def test_both_backends_continue_the_prompt_with_the_same_greedy_tokens(demo_dir, prompt_ids, torch_continuation):
    from llama_flax import FlaxLlamaForCausalLM

    model = FlaxLlamaForCausalLM.from_pretrained(demo_dir)
    flax_ids = np.asarray(model.generate(prompt_ids, max_new_tokens=NEW_TOKENS, do_sample=False))
    np.testing.assert_array_equal(flax_ids, torch_continuation)
    np.testing.assert_array_equal(torch_continuation[:, :prompt_ids.shape[1]], prompt_ids)


def test_the_continuation_is_mostly_known_english_words(demo_dir, prompt_ids, torch_continuation):
    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    text = tokenizer.decode(torch_continuation[0, prompt_ids.shape[1]:], skip_special_tokens=True)
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) >= 8, text
    known = [word for word in words if word in COMMON_ENGLISH_WORDS]
    assert len(known) >= 0.6 * len(words), f"{text!r}: only {len(known)} of {len(words)} words are known English"


def test_mask_command_without_a_model_uses_the_demo_tokenizer(demo_dir, capsys):
    from llama_twin.cli import main

    assert main(["mask", PROMPT, "--no-color"]) == 0
    out = capsys.readouterr().out
    tokens = AutoTokenizer.from_pretrained(demo_dir).tokenize(PROMPT)
    assert all(repr(token) in out for token in ["<s>", *tokens])
