"""Random initialisation of the Flax twin from a config (FlaxLlama*(config, dtype, seed))."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from llama_flax import FlaxLlamaForCausalLM
from llama_shared.config import LlamaConfig
from llama_shared.naming import flatten_tree


def test_random_init_follows_the_initialisers_and_the_seed():
    """FlaxLlama*(config) draws every tensor: normal(0, initializer_range) kernels and embeddings in
    param_dtype, unit norms, zero biases; the same seed gives the same params, another seed others."""
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True, initializer_range=0.05)
    model = FlaxLlamaForCausalLM(config, dtype=jnp.bfloat16, seed=3)
    flat = flatten_tree(model.params)
    assert set(flat) == set(model.param_shapes())
    for path, value in flat.items():
        assert value.dtype == jnp.bfloat16 and value.shape == model.param_shapes()[path].shape, path
        values = np.asarray(value, np.float32)
        if path[-1] in ("kernel", "embedding"):
            assert abs(values.std() - 0.05) < 0.005 and abs(values.mean()) < 0.005, path
        else:
            np.testing.assert_array_equal(values, 1.0 if path[-1] == "weight" else 0.0, err_msg=str(path))
    kernels = [path for path in flat if path[-1] == "kernel"]
    assert not np.array_equal(flat[kernels[0]][:4, :4], flat[kernels[1]][:4, :4])
    same = flatten_tree(FlaxLlamaForCausalLM(config, dtype=jnp.bfloat16, seed=3).params)
    other = flatten_tree(FlaxLlamaForCausalLM(config, dtype=jnp.bfloat16, seed=4).params)
    for path in kernels:
        np.testing.assert_array_equal(np.asarray(same[path]), np.asarray(flat[path]))
        assert not np.array_equal(np.asarray(other[path]), np.asarray(flat[path]))
