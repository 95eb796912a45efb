"""Weight-only int8 / int4 quantization (issue 7): format, twin parity, error against float, bytes, errors."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from helpers_quant import REALISTIC, mean_kl_per_token, save_realistic_model
from llama_flax import quantization as flax_quant
from llama_flax.modeling import FlaxLlamaForCausalLM
from llama_shared import quantization as q
from llama_shared.checkpoints import Checkpoint
from llama_shared.errors import CheckpointError, ConfigError
from llama_shared.naming import flatten_tree, hf_key
from llama_torch import quantization as torch_quant
from llama_torch.tensors import to_numpy
from llama_torch.modeling import LlamaForCausalLM

SETTINGS = {"int8": q.QuantizationConfig(8), "int8-zp": q.QuantizationConfig(8, symmetric=False),
            "int4-g32": q.QuantizationConfig(4, 32), "int4-g128": q.QuantizationConfig(4, 128),
            "int4-g64-zp": q.QuantizationConfig(4, 64, symmetric=False)}


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    return save_realistic_model(str(tmp_path_factory.mktemp("realistic")))


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(3, REALISTIC["vocab_size"], (4, 64))


@pytest.fixture(scope="module")
def float_logits(realistic, token_ids):
    with torch.no_grad():
        return LlamaForCausalLM.from_pretrained(realistic)(torch.from_numpy(token_ids)).logits.numpy()


def torch_logits(model, token_ids):
    with torch.no_grad():
        return model(torch.from_numpy(token_ids)).logits.numpy()


# ------------------------------------------------------------------------------------------------
# The format and the numpy reference


def test_int4_packing_round_trips_and_puts_even_columns_in_the_low_nibble():
    codes = np.random.default_rng(0).integers(-8, 8, (6, 64)).astype(np.int8)
    packed = q.pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.shape == (6, 32)
    np.testing.assert_array_equal(q.unpack_int4(packed), codes)
    assert packed[0, 0] == (int(codes[0, 0]) + 8) | ((int(codes[0, 1]) + 8) << 4)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_reference_round_trip_error_is_at_most_half_a_step(name):
    settings = SETTINGS[name]
    weight = np.random.default_rng(1).standard_t(5, (48, 256)).astype(np.float32)
    tensors = q.quantize(weight, settings)
    specs = settings.tensor_specs(48, 256, np.float32)
    assert {k: (v.shape, v.dtype) for k, v in tensors.items()} == specs
    step = np.repeat(tensors["scales"], 256 // tensors["scales"].shape[1], axis=1)
    error = np.abs(q.dequantize(tensors, settings) - weight)
    float_rounding = 4 * np.finfo(np.float32).eps * np.abs(weight)
    assert np.all(error <= 0.5 * step + float_rounding)
    assert error.max() > 0.2 * step.max()  # the codes really are coarse


def test_bfloat16_scales_are_the_ones_the_codes_were_rounded_against():
    import ml_dtypes

    weight = np.random.default_rng(2).standard_normal((16, 128)).astype(np.float32)
    tensors = q.quantize(weight, SETTINGS["int4-g32"], ml_dtypes.bfloat16)
    assert tensors["scales"].dtype == ml_dtypes.bfloat16
    step = np.repeat(tensors["scales"].astype(np.float32), 32, axis=1)
    scale_rounding = 2.0**-8 * np.abs(weight)  # a bfloat16 scale is off by <= 2^-9: the top code may clip
    assert np.all(np.abs(q.dequantize(tensors, SETTINGS["int4-g32"]) - weight) <= 0.5 * step + scale_rounding)


# ------------------------------------------------------------------------------------------------
# Both twins


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_twins_hold_the_same_integers_and_agree_on_logits(name, realistic, token_ids):
    settings = SETTINGS[name]
    torch_model = LlamaForCausalLM.from_pretrained(realistic, quantization=settings)
    flax_model = FlaxLlamaForCausalLM.from_pretrained(realistic, quantization=settings)
    state = torch_model.state_dict()
    flat = {hf_key(path)[0]: np.asarray(v) for path, v in flatten_tree(flax_model.params).items()}
    quantized = [k for k in state if k.endswith(".qweight")]
    assert len(quantized) == 7 * REALISTIC["num_hidden_layers"] + 1
    for key in quantized + [k.replace("qweight", "scales") for k in quantized]:
        np.testing.assert_array_equal(to_numpy(state[key]), flat[key], err_msg=key)
    flax_logits = np.asarray(flax_model(jnp.asarray(token_ids)).logits)
    np.testing.assert_allclose(torch_logits(torch_model, token_ids), flax_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["int8", "int4-g32", "int4-g64-zp"])
def test_quantized_layers_compute_x_times_the_reference_dequantized_weight(name):
    settings = SETTINGS[name]
    rng = np.random.default_rng(3)
    weight, x = rng.standard_normal((96, 128)).astype(np.float32), rng.standard_normal((2, 5, 128)).astype(np.float32)
    tensors = q.quantize(weight, settings)
    expected = x.astype(np.float64) @ q.dequantize(tensors, settings).astype(np.float64).T
    layer = torch_quant.QuantizedLinear(128, 96, False, settings)
    for leaf, array in tensors.items():
        getattr(layer, leaf).copy_(torch.from_numpy(array))
    with torch.no_grad():
        np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy(), expected, atol=2e-5, rtol=0)
    flax_out = flax_quant.QuantizedDense(96, settings).apply({"params": tensors}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(flax_out), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_quantize_on_a_loaded_model_equals_quantizing_while_loading(backend, realistic, token_ids):
    cls = LlamaForCausalLM if backend == "torch" else FlaxLlamaForCausalLM
    module = torch_quant if backend == "torch" else flax_quant
    loaded = module.quantize(cls.from_pretrained(realistic), "int4", group_size=64)
    streamed = cls.from_pretrained(realistic, quantization="int4", group_size=64)
    assert loaded.config == streamed.config
    if backend == "torch":
        np.testing.assert_array_equal(torch_logits(loaded, token_ids), torch_logits(streamed, token_ids))
    else:
        ids = jnp.asarray(token_ids)
        np.testing.assert_array_equal(np.asarray(loaded(ids).logits), np.asarray(streamed(ids).logits))
    with pytest.raises(ConfigError, match="already quantized"):
        module.quantize(loaded, "int8")


def test_quantized_checkpoints_round_trip_bit_exactly_across_twins(realistic, token_ids, tmp_path):
    torch_model = LlamaForCausalLM.from_pretrained(realistic, quantization="int4", group_size=32)
    torch_model.save_pretrained(tmp_path / "from_torch")
    flax_model = FlaxLlamaForCausalLM.from_pretrained(tmp_path / "from_torch")
    flax_model.save_pretrained(tmp_path / "from_flax")
    with open(tmp_path / "from_flax" / "config.json") as f:
        assert json.load(f)["quantization_config"] == SETTINGS["int4-g32"].to_dict()
    assert Checkpoint(tmp_path / "from_flax").metadata[q.METADATA_KEY]
    again = LlamaForCausalLM.from_pretrained(tmp_path / "from_flax")
    for key, tensor in torch_model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key
    np.testing.assert_allclose(np.asarray(flax_model(jnp.asarray(token_ids)).logits),
                               torch_logits(again, token_ids), atol=1e-4, rtol=0)


def test_cached_greedy_decoding_is_the_same_in_both_twins(realistic, token_ids):
    torch_model = LlamaForCausalLM.from_pretrained(realistic, quantization="int4")
    flax_model = FlaxLlamaForCausalLM.from_pretrained(realistic, quantization="int4")
    prompt = token_ids[:1, :8]
    torch_ids = torch_model.generate(torch.from_numpy(prompt), max_new_tokens=16, do_sample=False).numpy()
    flax_ids = np.asarray(flax_model.generate(jnp.asarray(prompt), max_new_tokens=16, do_sample=False))
    np.testing.assert_array_equal(torch_ids, flax_ids)


def test_quantized_linear_runs_under_torch_compile():
    settings = SETTINGS["int4-g32"]
    layer = torch_quant.QuantizedLinear(64, 64, True, settings)
    for leaf, array in q.quantize(np.random.default_rng(4).standard_normal((64, 64)).astype(np.float32),
                                  settings).items():
        getattr(layer, leaf).copy_(torch.from_numpy(array))
    x = torch.randn(3, 64)
    with torch.no_grad():
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), layer(x), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# Error against the float model, and bytes


def test_mean_kl_per_token_against_float_is_bounded(realistic, token_ids, float_logits):
    """Bounds from measurement on this model (helpers_quant: heavy-tailed weights, loud input channels).

    Measured mean KL(float || quantized) per token over 256 tokens, seeds 0-3 of the model, on
    2026-11-27: int8 0.0025-0.0032 nats, int4-g32 0.20-0.23, int4-g128 0.44-0.50 (float entropy
    1.75-1.90 nats). This model is deliberately hard: the relative weight error of int4-g128 is
    19.5% here against 11% for Gaussian weights, and a random network has none of a trained one's
    redundancy, so the int4 figures are far above what trained Llamas show. The bounds are about
    twice the largest int8 and 1.5 times the largest int4-g128 value measured; a broken format
    (a swapped nibble order, scales applied to the wrong group) scores several nats.
    """
    kl = {}
    for name in ("int8", "int4-g32", "int4-g128"):
        model = LlamaForCausalLM.from_pretrained(realistic, quantization=SETTINGS[name])
        kl[name] = mean_kl_per_token(float_logits, torch_logits(model, token_ids))
    print(f"mean KL per token vs float: {kl}")
    assert kl["int8"] < 0.006
    assert kl["int4-g128"] < 0.75
    assert kl["int8"] < kl["int4-g32"] < kl["int4-g128"]


def torch_parameter_bytes(model) -> int:
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_parameter_bytes_against_bfloat16(realistic):
    """Whole-model bytes (embedding and norms stay bfloat16), held against the issue's ceilings."""
    float_bytes = torch_parameter_bytes(LlamaForCausalLM.from_pretrained(realistic, dtype=torch.bfloat16))
    ratios = {}
    for name in ("int8", "int4-g128"):
        torch_model = LlamaForCausalLM.from_pretrained(realistic, dtype=torch.bfloat16, quantization=SETTINGS[name])
        flax_model = FlaxLlamaForCausalLM.from_pretrained(realistic, dtype=jnp.bfloat16, quantization=SETTINGS[name])
        flax_bytes = sum(leaf.nbytes for leaf in flatten_tree(flax_model.params).values())
        assert flax_bytes == torch_parameter_bytes(torch_model)
        ratios[name] = flax_bytes / float_bytes
    print(f"parameter bytes / bfloat16: {ratios}")
    assert ratios["int8"] <= 0.55
    assert ratios["int4-g128"] <= 0.30


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("cls", [LlamaForCausalLM, FlaxLlamaForCausalLM])
def test_a_group_size_that_does_not_divide_the_input_dimension_is_refused(cls, hf_checkpoint):
    with pytest.raises(ConfigError, match="group_size 128 does not divide the input dimension 64 of q_proj"):
        cls.from_pretrained(hf_checkpoint(), quantization="int4", group_size=128)


def test_unsupported_settings_are_refused():
    with pytest.raises(ConfigError, match="bits must be one of"):
        q.QuantizationConfig(3)
    with pytest.raises(ConfigError, match="quantization must be one of"):
        q.QuantizationConfig.create("int2")
    with pytest.raises(ConfigError, match="group_size must be one of"):
        q.QuantizationConfig.create("int4", group_size=48)
    with pytest.raises(ConfigError, match="int8 quantizes per output channel"):
        q.QuantizationConfig.create("int8", group_size=64)
    with pytest.raises(ConfigError, match="subset of"):
        q.QuantizationConfig(8, modules=("embed_tokens",))
    with pytest.raises(ConfigError, match="does not divide the input dimension 96 of the weight"):
        q.quantize(np.zeros((4, 96), np.float32), SETTINGS["int4-g64-zp"])


@pytest.fixture(scope="module")
def int4_checkpoint(realistic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int4_g128")
    LlamaForCausalLM.from_pretrained(realistic, quantization="int4").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("cls", [LlamaForCausalLM, FlaxLlamaForCausalLM])
@pytest.mark.parametrize("request_", [dict(quantization="int8"), dict(quantization="int4", group_size=64)])
def test_a_quantized_checkpoint_loaded_with_other_settings_is_refused(cls, request_, int4_checkpoint):
    with pytest.raises(CheckpointError, match="holds int4-g128 .* cannot load as int"):
        cls.from_pretrained(int4_checkpoint, **request_)
    assert cls.from_pretrained(int4_checkpoint, quantization="int4", group_size=128).config == \
        cls.from_pretrained(int4_checkpoint).config


def test_a_config_that_disagrees_with_the_checkpoint_metadata_is_refused(int4_checkpoint, tmp_path):
    for name in os.listdir(int4_checkpoint):
        (tmp_path / name).write_bytes((int4_checkpoint / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    del config["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.* says float weights but the safetensors metadata says int4"):
        LlamaForCausalLM.from_pretrained(tmp_path)
