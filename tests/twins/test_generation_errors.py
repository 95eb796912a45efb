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
    "negative max_new_tokens": (dict(max_new_tokens=-5), "max_new_tokens"),
    "max_new_tokens past the positions": (dict(max_new_tokens=10**9), "more than the model's limit of 512"),
    "max_length past the positions": (dict(max_length=10**9), "max_length 1000000000"),
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
    for name in ("prefill", "decode_step", "KVCache"):
        monkeypatch.setattr(torch_generation, name, Untouchable())
    monkeypatch.setattr(flax_generation, "KVCache", Untouchable())
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


@pytest.mark.parametrize("backend", ["torch", "flax"])
@pytest.mark.parametrize("length", ["max_new_tokens", "max_length"])
def test_a_huge_length_in_generation_config_json_is_an_error_before_allocating(hf_checkpoint, tmp_path, backend,
                                                                                length, no_compiling):
    """A repository's generation_config.json asking for 10**9 tokens (torch built an 8 GB mask and asked
    for 128 GB of cache, Flax for 1.1 TB)."""
    import json
    import shutil

    import torch

    from llama_flax import FlaxLlamaForCausalLM
    from llama_torch import LlamaForCausalLM

    folder = tmp_path / "model"
    shutil.copytree(hf_checkpoint(), folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, length: 10**9}))
    model = (LlamaForCausalLM if backend == "torch" else FlaxLlamaForCausalLM).from_pretrained(folder)
    ids = torch.from_numpy(PROMPT) if backend == "torch" else PROMPT
    with pytest.raises(GenerationError, match=f"{length} 1000000000 with a 4-token prompt needs .* more than the "
                                              f"model's limit of 512"):
        model.generate(ids)


def test_dynamic_rope_may_generate_up_to_its_factor_times_the_positions(twins):
    from llama_shared.generation import plan_generation

    dynamic = twins[0].config.replace(rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert plan_generation(PROMPT, None, GenerationConfig(max_new_tokens=1020), dynamic).max_new_tokens == 1020
    with pytest.raises(GenerationError, match="limit of 1024 .*dynamic"):
        plan_generation(PROMPT, None, GenerationConfig(max_new_tokens=1021), dynamic)
