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
    with pytest.raises(ConfigError, match="int4 needs a group_size"):
        q.QuantizationConfig(4)
    with pytest.raises(ConfigError, match="subset of"):
        q.QuantizationConfig(8, modules=("norm",))
    with pytest.raises(ConfigError, match="needs symmetric=False"):
        q.QuantizationConfig(4, 32, zero_point_domain="float")
    with pytest.raises(ConfigError, match="zero_point_domain must be one of"):
        q.QuantizationConfig(4, 32, symmetric=False, zero_point_domain="half")
    with pytest.raises(ConfigError, match="kernel must be one of"):
        q.QuantizationConfig(8, kernel="gpu")


def test_a_group_size_that_does_not_divide_a_width_names_those_that_do():
    with pytest.raises(ConfigError, match="group_size 64 does not divide the input width 96 of the weight; "
                                          "group sizes that divide it: 16, 32"):
        q.quantize(np.zeros((4, 96), np.float32), SETTINGS["int4-g64-zp"])
    assert q.dividing_group_sizes(576) == [16, 32, 64] and q.dividing_group_sizes(960) == [16, 32, 64]
    with pytest.raises(ConfigError, match="width 688 of down_proj; group sizes that divide it: 16$"):
        SETTINGS["int4-g32"].check_model(q.LlamaConfig(hidden_size=256, intermediate_size=688))
    with pytest.raises(ConfigError, match="none of .* divides it; int8 can take group_size None"):
        q.quantize(np.zeros((4, 40), np.float32), SETTINGS["int8-g32"])


def test_float_zero_points_store_the_lowest_value_and_dequantize_as_gguf_q4_1():
    """W = (code - qmin) * scale + min: with GGUF Q4_1's nibble = code + 8, that is nibble * d + m."""
    weight = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32) + 0.7
    settings = SETTINGS["int4-g32-fzp"]
    tensors = q.quantize(weight, settings, np.float16)
    assert sorted(tensors) == ["mins", "qweight", "scales"] and tensors["mins"].dtype == np.float16
    np.testing.assert_array_equal(tensors["mins"], weight.reshape(8, 2, 32).min(-1).astype(np.float16))
    nibbles = q.unpack_int4(tensors["qweight"]).astype(np.float32) + 8
    expected = nibbles.reshape(8, 2, 32) * tensors["scales"].astype(np.float32)[..., None] \
        + tensors["mins"].astype(np.float32)[..., None]
    np.testing.assert_array_equal(q.dequantize(tensors, settings), expected.reshape(8, 64))


def test_the_kernel_is_neither_compared_nor_written_unless_chosen():
    portable = q.with_kernel(SETTINGS["int8"], "portable")
    assert portable == SETTINGS["int8"] and portable.kernel == "portable"
    assert "kernel" not in SETTINGS["int8"].to_dict() and portable.to_dict()["kernel"] == "portable"
    assert q.QuantizationConfig.from_dict(portable.to_dict(), "test").kernel == "portable"


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_map_to_the_format_bit_for_bit(type_name):
    """Codes and float16 scales are copied from the blocks: the format's dequantization of them is
    exactly gguf's own (Q4_0's nibble offset of 8 and element j / j + 16 nibble order included)."""
    import gguf

    from llama_shared.checkpoints.gguf_quantized import MAPPED, block_tensors

    weight = np.random.default_rng(4).standard_normal((8, 128)).astype(np.float32) + 0.3
    kind = gguf.GGMLQuantizationType[type_name]
    blocks = gguf.quantize(weight, kind)
    tensors = block_tensors(type_name, blocks, weight.shape)
    assert tensors["scales"].dtype == np.float16 and tensors["scales"].shape == (8, 4)
    np.testing.assert_array_equal(q.dequantize(tensors, MAPPED[type_name]), gguf.dequantize(blocks, kind))
