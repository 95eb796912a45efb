"""Bad generation input gets a clear GenerationError before anything is traced, jitted or compiled."""

from __future__ import annotations

import numpy as np
import pytest

from llama_shared.errors import GenerationError
from llama_shared.generation import GenerationConfig

PROMPT = np.array([[1, 5, 9, 14]])
BAD_CALLS = {
    "prompt longer than the cache": (dict(max_length=3), "max_length"),
    "token id outside the vocabulary": (dict(input_ids=np.array([[1, 5, 128]])), "token id 128"),
    "negative token id": (dict(input_ids=np.array([[1, -3, 5]])), "token id -3"),
    "top_p zero": (dict(do_sample=True, top_p=0.0), "top_p"),
    "top_p above one": (dict(do_sample=True, top_p=1.2), "top_p"),
    "temperature zero with sampling": (dict(do_sample=True, temperature=0.0), "temperature"),
    "negative temperature with sampling": (dict(do_sample=True, temperature=-1.0), "temperature"),
    "empty prompt": (dict(input_ids=np.zeros((1, 0), np.int64)), "non-empty"),
    "all-padding row": (dict(input_ids=np.array([[0, 0], [1, 5]]), attention_mask=np.array([[0, 0], [1, 1]])),
                        "row 0 is empty"),
    "mask of another shape": (dict(attention_mask=np.ones((1, 3))), "attention_mask"),
    "eos outside the vocabulary": (dict(eos_token_id=[2, 500]), "500"),
    "zero max_new_tokens": (dict(max_new_tokens=0), "max_new_tokens"),
    "min_p above one": (dict(do_sample=True, min_p=1.5), "min_p"),
}


class Untouchable:
    """Stands in for a jitted or compiled function: any use fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"compiled machinery touched ({name}) before the input was checked")

    def __call__(self, *args, **kwargs):
        raise AssertionError("compiled machinery called before the input was checked")


@pytest.fixture
def no_compiling(monkeypatch):
    import llama_flax.generation as flax_generation
    import llama_torch.generation as torch_generation

    for name in ("_start_jit", "_advance_jit", "_generate_loop_jit", "_is_running_jit"):
        monkeypatch.setattr(flax_generation, name, Untouchable())
    for name in ("prefill", "decode_step"):
        monkeypatch.setattr(torch_generation, name, Untouchable())
    monkeypatch.setattr(torch_generation.torch, "compile", Untouchable())


@pytest.mark.parametrize("backend", ["torch", "flax"])
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_raises_before_compiling(case, backend, twins, no_compiling):
    import torch

    arguments, message = BAD_CALLS[case]
    arguments = dict(arguments)
    ids = arguments.pop("input_ids", PROMPT)
    mask = arguments.pop("attention_mask", None)
    model = twins[0] if backend == "torch" else twins[1]
    if backend == "torch":
        ids, mask = torch.from_numpy(ids), None if mask is None else torch.from_numpy(mask)
    with pytest.raises(GenerationError) as error:
        model.generate(ids, mask, **arguments)
    assert message in str(error.value)


def test_a_prompt_longer_than_a_given_cache(twins):
    from llama_shared.generation import plan_generation

    config = GenerationConfig(max_new_tokens=4)
    with pytest.raises(GenerationError, match="longer than the cache of 3"):
        plan_generation(PROMPT, None, config, twins[0].config, cache_length=3)
    with pytest.raises(GenerationError, match="need 8 cache slots"):
        plan_generation(PROMPT, None, config, twins[0].config, cache_length=6)
