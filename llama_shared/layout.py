"""The kernel layout change on the host: Flax keeps a linear layer's weight as a kernel [in, out],
Hugging Face and torch as [out, in]. One transposing copy for conversion and for Flax saving, since
numpy's own copy of a transposed view is slow.
"""

from __future__ import annotations

import numpy as np

_BLOCK_ROWS = 16


def transposed(array: np.ndarray) -> np.ndarray:
    """A 2-D array's transpose as a new C-contiguous array, copied 16 rows at a time, so each
    block's reads and writes stay in the cache (numpy's element-strided copy of a large matrix misses it)."""
    out = np.empty(array.shape[::-1], array.dtype)
    for start in range(0, array.shape[0], _BLOCK_ROWS):
        out[:, start:start + _BLOCK_ROWS] = array[start:start + _BLOCK_ROWS].T
    return out
