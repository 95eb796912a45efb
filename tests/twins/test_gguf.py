"""Both twins' from_pretrained(path, gguf_file=...) against transformers' GGUF loader on the same file,
for every GGML tensor type the reader supports (files written by tests/gguf_files.py with the gguf
package's writer and quantizers)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers

from llama_flax import FlaxLlamaForCausalLM
from llama_torch import LlamaForCausalLM
from tests.gguf_files import TENSOR_TYPES, write_gguf

TOL = 1e-4
# Rows of 256 values: the K-quants' block size.
GGUF_MODEL = dict(vocab_size=256, hidden_size=256, intermediate_size=512)


@pytest.fixture(scope="module")
def gguf_folder(hf_checkpoint, tmp_path_factory):
    """factory(tensor_type, tied=False) -> folder holding model.gguf written from a random checkpoint."""
    made = {}

    def make(tensor_type: str, tied: bool = False):
        if (tensor_type, tied) not in made:
            folder = tmp_path_factory.mktemp(f"gguf-{tensor_type}")
            write_gguf(hf_checkpoint(**GGUF_MODEL, tie_word_embeddings=tied), folder / "model.gguf", tensor_type)
            made[tensor_type, tied] = str(folder)
        return made[tensor_type, tied]

    return make


def batch():
    ids = np.random.default_rng(0).integers(3, 256, size=(2, 40))
    mask = np.ones_like(ids)
    mask[1, :9] = 0
    return ids, mask


def all_logits(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, mask = batch()
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf").eval()
    ours = LlamaForCausalLM.from_pretrained(folder, gguf_file="model.gguf")
    flax = FlaxLlamaForCausalLM.from_pretrained(folder, gguf_file="model.gguf")
    with torch.no_grad():
        expected = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()
        got_torch = ours(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got_flax = np.asarray(flax(ids, attention_mask=mask).logits)
    return expected, got_torch, got_flax


@pytest.mark.parametrize("tensor_type", TENSOR_TYPES)
def test_gguf_logits_equal_transformers_gguf_loader(tensor_type, gguf_folder):
    expected, got_torch, got_flax = all_logits(gguf_folder(tensor_type))
    assert np.abs(expected).max() > 0.1   # the weights reached the logits
    np.testing.assert_allclose(got_torch, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(got_flax, expected, rtol=0, atol=TOL)


def test_gguf_without_output_tensor_is_tied(gguf_folder):
    folder = gguf_folder("Q8_0", tied=True)
    assert LlamaForCausalLM.from_pretrained(folder, gguf_file="model.gguf").config.tie_word_embeddings
    expected, got_torch, got_flax = all_logits(folder)
    np.testing.assert_allclose(got_torch, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(got_flax, expected, rtol=0, atol=TOL)


def test_gguf_f32_equals_the_checkpoint_it_was_written_from(hf_checkpoint, gguf_folder):
    """Without quantization the GGUF model is the original one: the q/k permutation is undone."""
    ids, mask = batch()
    original = LlamaForCausalLM.from_pretrained(hf_checkpoint(**GGUF_MODEL))
    from_gguf = LlamaForCausalLM.from_pretrained(gguf_folder("F32"), gguf_file="model.gguf")
    for (name, a), (_, b) in zip(original.state_dict().items(), from_gguf.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        np.testing.assert_array_equal(original(torch.tensor(ids), torch.tensor(mask)).logits.numpy(),
                                      from_gguf(torch.tensor(ids), torch.tensor(mask)).logits.numpy())


# ------------------------------------------------------------------------------------------------
# Q8_0, Q4_0 and Q4_1 files load quantized: the blocks' codes and scales, not dequantized floats


@pytest.mark.parametrize("tensor_type", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("tied", [False, True])
def test_a_quantized_gguf_loads_quantized_in_about_the_file_s_bytes(tensor_type, tied, gguf_folder):
    from llama_shared.checkpoints.gguf import GGUFCheckpoint
    from llama_torch.quantization import QuantizedEmbedding, QuantizedLinear

    folder = gguf_folder(tensor_type, tied=tied)
    ours = LlamaForCausalLM.from_pretrained(folder, gguf_file="model.gguf")
    flax = FlaxLlamaForCausalLM.from_pretrained(folder, gguf_file="model.gguf")
    settings = ours.config.extra["quantization_config"]
    assert settings == flax.config.extra["quantization_config"]
    assert settings["group_size"] == 32 and settings["scale_dtype"] == "float16"
    assert settings["bits"] == (8 if tensor_type == "Q8_0" else 4) and settings["symmetric"] == (tensor_type != "Q4_1")
    assert isinstance(ours.model.embed_tokens, QuantizedEmbedding)
    assert isinstance(ours.model.layers[0].mlp.down_proj, QuantizedLinear) and ours.model.layers[0].mlp.down_proj.scales.dtype == torch.float16
    file_bytes = sum(t.nbytes for t in GGUFCheckpoint(f"{folder}/model.gguf").tensors.values())
    torch_bytes = sum(t.numel() * t.element_size() for t in ours.state_dict().values())
    flax_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(flax.params))
    assert torch_bytes == flax_bytes
    assert abs(torch_bytes / file_bytes - 1) <= 0.05, (torch_bytes, file_bytes)
    if tied:
        expected, got_torch, got_flax = all_logits(folder)
        np.testing.assert_allclose(got_torch, expected, rtol=0, atol=TOL)
        np.testing.assert_allclose(got_flax, expected, rtol=0, atol=TOL)
