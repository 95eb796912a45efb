"""The dense layers' product, with a faster form for a single row on XLA:CPU.

One row times an [in, out] kernel (batch-1 decoding) is a matrix-vector product that XLA:CPU
streams at about one core's read rate. Viewed as ROW_BLOCKS row blocks (a free reshape: each block
is contiguous), the same product becomes one batched product that XLA:CPU spreads over the cores;
the partial products are summed in float32. Elsewhere (more rows, GPU, TPU) it is lax.dot_general.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
ROW_BLOCKS = 8


def splits_one_row(lhs: Array, rhs: Array, dimension_numbers: Any) -> bool:
    """The product is one row by a 2-D [in, out] kernel whose rows divide into ROW_BLOCKS, on the CPU."""
    (lhs_contract, rhs_contract), (lhs_batch, _) = dimension_numbers
    return (jax.default_backend() == "cpu" and rhs.ndim == 2 and lhs.size == rhs.shape[0]
            and tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,) and not lhs_batch
            and rhs.shape[0] % ROW_BLOCKS == 0)


def dense_dot_general(lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None,
                      preferred_element_type: Any = None) -> Array:
    """lax.dot_general for nn.Dense (its dot_general argument); a single row on the CPU goes by row blocks."""
    if not splits_one_row(lhs, rhs, dimension_numbers):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    size_in, size_out = rhs.shape
    blocks = rhs.reshape(ROW_BLOCKS, size_in // ROW_BLOCKS, size_out)
    pieces = lhs.reshape(ROW_BLOCKS, 1, size_in // ROW_BLOCKS)
    partial = jax.lax.dot_general(pieces, blocks, (((2,), (1,)), ((0,), (0,))), precision=precision,
                                  preferred_element_type=jnp.float32)
    result_type = preferred_element_type or jnp.result_type(lhs, rhs)
    return partial.sum(0).astype(result_type).reshape(*lhs.shape[:-1], size_out)
