"""Fixtures of the tests that exercise both twins."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def twins(hf_checkpoint):
    """(torch twin, Flax twin) of the default tiny checkpoint, loaded afresh for each test module."""
    from llama_flax import FlaxLlamaForCausalLM
    from llama_torch import LlamaForCausalLM

    folder = hf_checkpoint()
    return LlamaForCausalLM.from_pretrained(folder), FlaxLlamaForCausalLM.from_pretrained(folder)
