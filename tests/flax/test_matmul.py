"""The Flax dense layers' one-row product on the CPU: the same numbers by row blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_flax.matmul import ROW_BLOCKS, dense_dot_general

DENSE = (((2,), (0,)), ((), ()))


def batched_products(function, *args) -> list:
    """The dimension numbers of every dot_general that has batch dimensions in function's jaxpr."""
    jaxpr = jax.make_jaxpr(function)(*args)
    return [eqn.params["dimension_numbers"] for eqn in jaxpr.eqns
            if eqn.primitive.name == "dot_general" and eqn.params["dimension_numbers"][1][0]]


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_one_row_product_equals_the_plain_product(dtype, tolerance):
    rng = np.random.default_rng(0)
    row = jnp.asarray(rng.standard_normal((1, 1, 96)), dtype)
    kernel = jnp.asarray(rng.standard_normal((96, 40)), dtype)
    split = dense_dot_general(row, kernel, DENSE)
    plain = jax.lax.dot_general(row, kernel, DENSE, preferred_element_type=jnp.float32)
    assert split.shape == (1, 1, 40) and split.dtype == dtype
    np.testing.assert_allclose(np.asarray(split, np.float32), np.asarray(plain), rtol=tolerance, atol=tolerance)


def test_only_one_row_on_the_cpu_is_split():
    kernel = jnp.ones((8 * ROW_BLOCKS, 16))
    one_row = lambda x: dense_dot_general(x, kernel, DENSE)  # noqa: E731
    assert len(batched_products(one_row, jnp.ones((1, 1, 8 * ROW_BLOCKS)))) == 1
    assert batched_products(one_row, jnp.ones((2, 1, 8 * ROW_BLOCKS))) == []
    odd_kernel = jnp.ones((8 * ROW_BLOCKS + 1, 16))
    assert batched_products(lambda x: dense_dot_general(x, odd_kernel, DENSE), jnp.ones((1, 1, 8 * ROW_BLOCKS + 1))) == []
