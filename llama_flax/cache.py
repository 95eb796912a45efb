"""The static KV cache: per layer (batch * kv_heads, max_length, head_dim), zero-filled, allocated once.

One row of slots per batch row and kv head is the operand attention's batched dots take
(llama_flax.modeling.grouped_attention), so a decoding step writes its new slots in place and the
dots read the cache where it lies. (With batch and kv heads as two axes, XLA:CPU fused each
layer's slot update twice, into the carried cache and into the dots' flattened operand, and copied
every layer's keys and values at every step to keep both.) The torch twin keeps the two axes:
(batch, kv_heads, max_length, head_dim), the layout scaled_dot_product_attention reads.

A pytree, so it passes through jax.jit (and can be donated); updates return a new cache. A model
with scanned layers keeps one stacked (layers, batch * kv_heads, max_length, head_dim) array for
the keys and one for the values, carried through nn.scan.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from llama_shared.config import LlamaConfig


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer (a tuple of per-layer arrays, or one stacked array each)."""

    keys: tuple[jax.Array, ...] | jax.Array
    values: tuple[jax.Array, ...] | jax.Array
    kv_heads: int = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, config: LlamaConfig, batch_size: int, max_length: int, dtype: Any = jnp.float32,
               stacked: bool = False) -> "KVCache":
        kv_heads = config.num_key_value_heads
        shape = (batch_size * kv_heads, max_length, config.head_dim)
        if stacked:
            shape = (config.num_hidden_layers, *shape)
            return cls(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype), kv_heads=kv_heads)
        layers = range(config.num_hidden_layers)
        return cls(keys=tuple(jnp.zeros(shape, dtype) for _ in layers),
                   values=tuple(jnp.zeros(shape, dtype) for _ in layers), kv_heads=kv_heads)

    @property
    def stacked(self) -> bool:
        return not isinstance(self.keys, tuple)

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[-2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[-3] // self.kv_heads

    def layer(self, index: int | jax.Array) -> "LayerCache":
        """Layer index's view: its own arrays, or (stacked) the whole stack and the index."""
        if self.stacked:
            return LayerCache(self.keys, self.values, jnp.asarray(index, jnp.int32))
        return LayerCache(self.keys[index], self.values[index])

    def replace_layer(self, index: int | jax.Array, layer: "LayerCache") -> "KVCache":
        if self.stacked:
            return self.replace(keys=layer.keys, values=layer.values)
        keys, values = list(self.keys), list(self.values)
        keys[index], values[index] = layer.keys, layer.values
        return self.replace(keys=tuple(keys), values=tuple(values))


@flax.struct.dataclass
class LayerCache:
    """One layer's keys and values; with index set, keys and values are the stacked arrays of every
    layer and index picks this one, so an update writes only the new slots into the stack (in place
    inside nn.scan's loop) instead of copying the layer out and back."""

    keys: jax.Array
    values: jax.Array
    index: jax.Array | None = None

    def update(self, k: jax.Array, v: jax.Array, cache_position: jax.Array) -> "LayerCache":
        """Store k/v (batch * kv_heads, seq, head_dim) at the contiguous slots cache_position."""
        start = (0, cache_position[0], 0)
        if self.index is not None:
            start = (self.index, *start)
            k, v = k[None], v[None]
        return self.replace(keys=jax.lax.dynamic_update_slice(self.keys, k.astype(self.keys.dtype), start),
                            values=jax.lax.dynamic_update_slice(self.values, v.astype(self.values.dtype), start))

    def arrays(self) -> tuple[jax.Array, jax.Array]:
        """This layer's (keys, values), (batch * kv_heads, max_length, head_dim) each."""
        if self.index is None:
            return self.keys, self.values
        return self.keys[self.index], self.values[self.index]
