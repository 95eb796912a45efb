"""The torch twin's quantized layer under torch.compile (fullgraph: a graph break fails): the portable
product, and the native kernel as an operator; and a quantized model copied and saved whole."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from llama_shared import quantization as q
from llama_shared.config import LlamaConfig
from llama_torch import native
from llama_torch import quantization as torch_quant
from llama_torch.modeling import LlamaForCausalLM
from tests.cases import QUANTIZATION_SETTINGS as SETTINGS


def quantized_layer(settings: q.QuantizationConfig, in_features: int = 64, out_features: int = 48) -> torch.nn.Module:
    """A QuantizedLinear with bias holding a random weight quantized by settings."""
    layer = torch_quant.QuantizedLinear(in_features, out_features, True, settings)
    weight = np.random.default_rng(5).standard_normal((out_features, in_features)).astype(np.float32)
    for leaf, array in q.quantize(weight, settings).items():
        getattr(layer, leaf).copy_(torch.from_numpy(array))
    return layer


def test_quantized_linear_runs_under_torch_compile():
    """Compiled, a quantized layer takes the portable product (inductor fuses its dequantization)."""
    layer = quantized_layer(q.with_kernel(SETTINGS["int4-g32"], "portable"), out_features=64)
    x = torch.randn(3, 64)
    with torch.no_grad():
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), layer(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["int4-g32", "int4-g32-fzp", "int8"])
def test_compiled_quantized_layers_call_the_native_kernel(name, monkeypatch):
    """Under torch.compile (fullgraph) a layer on the "cpu" kernel calls llama_torch.native's operator,
    equal to the eager call; a compiled training step (x requiring grad) takes the portable product."""
    calls = []
    multiply = native.KernelCall.multiply
    monkeypatch.setattr(native.KernelCall, "multiply", lambda self, rows: calls.append(rows.shape) or multiply(self, rows))
    settings = q.with_kernel(SETTINGS[name], "cpu")
    layer = quantized_layer(settings)
    x = torch.randn(1, 64)
    with torch.no_grad():
        eager = layer(x)
        calls.clear()
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    assert calls == [(1, 64)]
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)
    calls.clear()
    trained = torch.compile(layer, backend="aot_eager", fullgraph=True)(x.clone().requires_grad_())
    assert calls == []
    portable = quantized_layer(q.with_kernel(settings, "portable"))(x)
    torch.testing.assert_close(trained, portable, atol=1e-6, rtol=0)


def test_a_quantized_model_that_has_run_the_kernel_deep_copies_and_saves_whole():
    """copy.deepcopy and torch.save of a model whose layers hold their kernel calls (single and joined):
    the copy computes the same logits from its own tensors."""
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = torch_quant.quantize(LlamaForCausalLM(config), q.with_kernel(SETTINGS["int4-g32"], "cpu"))
    ids = torch.ones(1, 1, dtype=torch.long)
    with torch.no_grad():
        logits = model(ids).logits
        copied = copy.deepcopy(model)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        model.model.layers[0].self_attn.q_proj.qweight.zero_()  # the copies must not read the original's codes
        torch.testing.assert_close(copied(ids).logits, logits, atol=0, rtol=0)
        buffer.seek(0)
        torch.testing.assert_close(torch.load(buffer, weights_only=False)(ids).logits, logits, atol=0, rtol=0)
