"""The core's list of the tensors a config implies (llama_shared.parameters) matches both twins'
parameters, and both twins check a checkpoint against it before building anything (issue 18): a
config far larger than its weights fails at once, integer, boolean or float8 weights are refused,
not cast."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

import llama_flax
import llama_torch
from llama_flax.loading import FlaxPreTrainedModel
from llama_shared.checkpoints import Checkpoint, save_tensors
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError
from llama_shared.naming import hf_key
from llama_shared.parameters import model_tensors
from llama_shared.quantization import QuantizationConfig, config_quantization, with_quantization
from llama_torch.quantization import replace_linears
from tests.conftest import TINY

CLASSES = ("LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaForQuestionAnswering",
           "LlamaForTokenClassification")
CONFIGS = {
    "gqa": {},
    "biases-tied-head_dim": dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True, head_dim=32),
    "int8": dict(quantization=QuantizationConfig(8)),
    "int4-zero-points": dict(quantization=QuantizationConfig(4, 32, symmetric=False)),
}


def tiny_config(case: str) -> LlamaConfig:
    changes = dict(CONFIGS[case])
    quantization = changes.pop("quantization", None)
    config = LlamaConfig.from_dict({**TINY, **changes, "num_labels": 3})
    return config if quantization is None else with_quantization(config, quantization)


@pytest.mark.parametrize("model_class, case", [(m, c) for m in CLASSES for c in sorted(CONFIGS)
                                                if m == "LlamaForCausalLM" or not c.startswith("int")])
def test_model_tensors_are_both_twins_parameters(model_class, case):
    """Quantized models are causal LMs (from_pretrained quantizes only those)."""
    config = tiny_config(case)
    quantized = config_quantization(config) is not None
    expected = {key: (spec.shape, spec.dtype) for key, spec in model_tensors(config, model_class).items()}

    with torch.device("meta"):
        model = getattr(llama_torch, model_class)(config)
    if quantized:
        replace_linears(model, config_quantization(config))
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    state = {k: v for k, v in model.state_dict().items() if k not in tied}
    assert list(state) == list(expected)
    for key, tensor in state.items():
        shape, dtype = expected[key]
        assert tuple(tensor.shape) == shape, key
        assert tensor.dtype.is_floating_point if dtype is None else str(tensor.dtype) == f"torch.{dtype.name}", key

    flax_class: type[FlaxPreTrainedModel] = getattr(llama_flax, f"Flax{model_class}")
    shapes = flax_class.without_params(config, jnp.float32).param_shapes()
    flax_expected = {}
    for path, spec in shapes.items():
        key, transposed = hf_key(path)
        flax_expected[key] = (tuple(reversed(spec.shape)) if transposed else tuple(spec.shape), np.dtype(spec.dtype))
    assert sorted(flax_expected) == sorted(expected)
    for key, (shape, dtype) in flax_expected.items():
        assert shape == expected[key][0], key
        assert np.issubdtype(dtype, np.floating) if expected[key][1] is None else dtype == expected[key][1], key


# ------------------------------------------------------------------------------------------------
# Checked before anything is built

LOADERS = {"torch": llama_torch.LlamaForCausalLM.from_pretrained, "flax": llama_flax.FlaxLlamaForCausalLM.from_pretrained}


@pytest.fixture
def nothing_built(monkeypatch):
    """Any attempt to build a model (torch layers, even on the meta device; Flax shapes) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the checkpoint was checked against its config")

    monkeypatch.setattr(llama_torch.modeling.LlamaDecoderLayer, "__init__", refuse)
    monkeypatch.setattr(FlaxPreTrainedModel, "param_shapes", refuse)


@pytest.fixture
def copied(hf_checkpoint, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(hf_checkpoint(), folder)
    return folder


def edit_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("backend", sorted(LOADERS))
@pytest.mark.parametrize("changes, message", [
    (dict(num_hidden_layers=2**31 - 1), r"num_hidden_layers is 2147483647, but .* holds layers 0 to 1 "),
    (dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8),
     r"'model\.embed_tokens\.weight' .* has shape \(128, 64\), but the config expects \(128, 4096\)"),
], ids=["2**31 layers", "8B widths"])
def test_config_far_larger_than_its_weights_fails_before_anything_is_built(copied, backend, changes, message,
                                                                           nothing_built):
    edit_config(copied, **changes)
    with pytest.raises(CheckpointError, match=message):
        LOADERS[backend](copied)


@pytest.mark.parametrize("backend", sorted(LOADERS))
@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.uint8, ml_dtypes.float8_e4m3fn])
def test_integer_boolean_and_float8_weights_are_refused_not_cast(copied, backend, dtype):
    checkpoint = Checkpoint(copied)
    state = {key: np.array(checkpoint.get(key)) for key in checkpoint.keys()}
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"].astype(dtype)
    save_tensors(copied, state)
    with pytest.raises(CheckpointError, match=rf"'model\.layers\.1\.mlp\.up_proj\.weight' .* is "
                                              rf"{np.dtype(dtype).name}, but the model needs floating weights"):
        LOADERS[backend](copied)
