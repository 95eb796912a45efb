"""llama_shared.layout.transposed: the blocked transposing copy shared by conversion and Flax saving."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from llama_shared.layout import transposed


@pytest.mark.parametrize("shape", [(1, 5), (16, 3), (37, 50), (3, 1)])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_transposed_equals_numpy_transpose(shape, dtype):
    array = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    out = transposed(array)
    assert out.flags.c_contiguous and out.dtype == array.dtype
    np.testing.assert_array_equal(out.view(np.uint8), np.ascontiguousarray(array.T).view(np.uint8))


def test_transposed_reads_a_strided_block_into_an_array_of_its_own():
    array = np.arange(40 * 30, dtype=np.float32).reshape(40, 30)
    block = array[5:38, 3:27:2]
    out = transposed(block)
    assert out.flags.c_contiguous and not np.shares_memory(out, array)
    np.testing.assert_array_equal(out, block.T)
