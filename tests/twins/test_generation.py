"""Greedy generation: Flax twin, torch twin and transformers give the same ids; eos, min_new_tokens,
repetition_penalty and max_length as in transformers; generation_config.json is read and written and
call arguments override it. Each twin's cached steps: tests/flax and tests/torch test_generation.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llama_shared.generation import GenerationConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def generate_all(models, ids, mask, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """transformers', the torch twin's and the Flax twin's greedy ids; eos_token_id=None means no eos
    (transformers' reading of an explicit None; the twins read None as "from the config" and [] as none)."""
    hf, torch_model, flax_model = models
    with torch.no_grad():
        reference = hf.generate(ids, attention_mask=mask, do_sample=False, **kwargs).numpy()
    if "eos_token_id" in kwargs and kwargs["eos_token_id"] is None:
        kwargs["eos_token_id"] = []
    ours_torch = torch_model.generate(ids, mask, do_sample=False, **kwargs).numpy()
    ours_flax = np.asarray(flax_model.generate(ids.numpy(), mask.numpy(), do_sample=False, **kwargs))
    return reference, ours_torch, ours_flax


@pytest.mark.parametrize("lengths", [[5, 12, 9], [7]], ids=["left-padded", "one-row"])
def test_greedy_128_tokens_identical_in_all_three(all_variants, lengths, left_padded_batch):
    """One row also: the Flax twin's one-row products on the CPU take llama_flax.matmul's row blocks."""
    ids, mask = left_padded_batch(lengths)
    reference, ours_torch, ours_flax = generate_all(all_variants, ids, mask, max_new_tokens=128, eos_token_id=None)
    assert reference.shape == (len(lengths), max(lengths) + 128)
    np.testing.assert_array_equal(ours_torch, reference)
    np.testing.assert_array_equal(ours_flax, reference)


def test_eos_list_stops_rows_and_fills_pad(models, left_padded_batch):
    ids, mask = left_padded_batch([4, 10])
    free_run, _, _ = generate_all(models, ids, mask, max_new_tokens=16, eos_token_id=None)
    # eos: a token row 0 produces at step 4 and one row 1 produces at step 9, so rows stop apart.
    eos = [int(free_run[0, 10 + 4]), int(free_run[1, 10 + 9])]
    reference, ours_torch, ours_flax = generate_all(models, ids, mask, max_new_tokens=16, eos_token_id=eos)
    assert reference.shape[1] < 10 + 16 or (reference[:, 10:] == 0).any()
    np.testing.assert_array_equal(ours_torch, reference)
    np.testing.assert_array_equal(ours_flax, reference)


def test_min_new_tokens_and_repetition_penalty_as_transformers(models, left_padded_batch):
    ids, mask = left_padded_batch([7, 3], seed=1)
    free_run, _, _ = generate_all(models, ids, mask, max_new_tokens=16, eos_token_id=None)
    eos = int(free_run[0, 7 + 2])
    reference, ours_torch, ours_flax = generate_all(models, ids, mask, max_new_tokens=16, eos_token_id=eos,
                                                    min_new_tokens=5, repetition_penalty=1.5)
    np.testing.assert_array_equal(ours_torch, reference)
    np.testing.assert_array_equal(ours_flax, reference)


def test_max_length_counts_the_prompt(models, left_padded_batch):
    ids, mask = left_padded_batch([6, 8], seed=2)
    reference, ours_torch, ours_flax = generate_all(models, ids, mask, max_length=13, eos_token_id=None)
    assert reference.shape == (2, 13)
    np.testing.assert_array_equal(ours_torch, reference)
    np.testing.assert_array_equal(ours_flax, reference)


def test_default_length_is_20_new_tokens(models, left_padded_batch):
    hf, torch_model, flax_model = models
    ids, mask = left_padded_batch([4], seed=3)
    assert torch_model.generate(ids, mask, eos_token_id=[]).shape == (1, 24)
    assert flax_model.generate(ids.numpy(), mask.numpy(), eos_token_id=[]).shape == (1, 24)


def test_generation_config_file_is_read_and_written(models, tmp_path):
    import transformers

    hf, torch_model, flax_model = models
    instruct = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, eos_token_id=[2, 5], pad_token_id=0,
                                bos_token_id=1, max_new_tokens=9)
    hf.generation_config = transformers.GenerationConfig(**instruct.to_dict())
    try:
        hf.save_pretrained(tmp_path)
    finally:
        hf.generation_config = transformers.GenerationConfig.from_model_config(hf.config)
    loaded = type(torch_model).from_pretrained(tmp_path).generation_config
    assert loaded == instruct
    for model in (torch_model, flax_model):
        model.generation_config = instruct
        out = tmp_path / type(model).__name__
        model.save_pretrained(out)
        reread = transformers.GenerationConfig.from_pretrained(out)
        assert (reread.do_sample, reread.temperature, reread.top_p, reread.eos_token_id, reread.max_new_tokens) == \
            (True, 0.6, 0.9, [2, 5], 9)
        model.generation_config = None


def test_call_arguments_override_the_model_config(models, left_padded_batch):
    _, torch_model, flax_model = models
    ids, mask = left_padded_batch([5], seed=6)
    for model, ids_in in ((torch_model, ids), (flax_model, ids.numpy())):
        model.generation_config = GenerationConfig(max_new_tokens=3, eos_token_id=[], pad_token_id=0)
        try:
            assert model.generate(ids_in).shape == (1, 8)
            assert model.generate(ids_in, max_new_tokens=5).shape == (1, 10)
            assert model.generate(ids_in, generation_config=GenerationConfig(max_new_tokens=4,
                                                                             eos_token_id=[])).shape == (1, 9)
        finally:
            model.generation_config = None
