"""The weight-only int8 / int4 format (issue 7) and its numpy reference: int4 packing, round-trip
error, bfloat16 scales, and the settings that are refused."""

from __future__ import annotations

import numpy as np
import pytest

from llama_shared import quantization as q
from llama_shared.errors import ConfigError
from tests.cases import QUANTIZATION_SETTINGS as SETTINGS


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
