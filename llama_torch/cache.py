"""The static KV cache: per layer (batch, kv_heads, max_length, head_dim), zero-filled, allocated once.

Heads before slots is the layout scaled_dot_product_attention reads, so a decoding step reads each
layer's keys and values where they lie.
"""

from __future__ import annotations

import torch

from llama_shared.config import LlamaConfig


class KVCache:
    """Keys and values of every layer, written in place at the given cache slots.

    Fixed shapes and in-place index_copy_ let torch.compile capture a decode step once; K/V keep
    their kv heads (never repeated for GQA). kv_heads is how many this process holds: all of them,
    or a tensor-parallel rank's share (the cache is then sharded by heads, as the k/v projections are).
    """

    def __init__(self, config: LlamaConfig, batch_size: int, max_length: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", kv_heads: int | None = None):
        shape = (batch_size, kv_heads or config.num_key_value_heads, max_length, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               cache_position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v (batch, kv_heads, seq, head_dim) at slots cache_position; return the whole layer."""
        self.keys[layer].index_copy_(2, cache_position, k.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(2, cache_position, v.to(self.values[layer].dtype))
        return self.keys[layer], self.values[layer]

    def reset(self) -> None:
        """Zero every layer, for reuse by a new prompt."""
        for tensor in (*self.keys, *self.values):
            tensor.zero_()
