"""The static KV cache: per layer (batch, max_length, kv_heads, head_dim), zero-filled, allocated once.

A pytree, so it passes through jax.jit (and can be donated); updates return a new cache.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from llama_shared.config import LlamaConfig


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer; a layer's pair is written at the given cache slots."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]

    @classmethod
    def create(cls, config: LlamaConfig, batch_size: int, max_length: int, dtype: Any = jnp.float32) -> "KVCache":
        shape = (batch_size, max_length, config.num_key_value_heads, config.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers))
        return cls(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers)))

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[1]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def layer(self, index: int) -> tuple[jax.Array, jax.Array]:
        return self.keys[index], self.values[index]

    def replace_layer(self, index: int, pair: tuple[jax.Array, jax.Array]) -> "KVCache":
        keys, values = list(self.keys), list(self.values)
        keys[index], values[index] = pair
        return self.replace(keys=tuple(keys), values=tuple(values))

    @staticmethod
    def update_layer(pair: tuple[jax.Array, jax.Array], k: jax.Array, v: jax.Array,
                     cache_position: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Store k/v (batch, seq, kv_heads, head_dim) at the contiguous slots cache_position."""
        keys, values = pair
        start = (0, cache_position[0], 0, 0)
        return (jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), start),
                jax.lax.dynamic_update_slice(values, v.astype(values.dtype), start))
