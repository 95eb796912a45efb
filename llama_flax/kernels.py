"""Attention kernels for packed rows (causal within documents given by segment ids), picked by the
backend: Splash attention (Pallas) on a TPU, cuDNN's fused attention with the document mask on a
GPU, and None elsewhere, where the model applies its mask grid with XLA.

Splash comes from jax.experimental.pallas.ops.tpu.splash_attention, which ships with jax (tokamax,
the Pallas kernel library, was evaluated as the source: docs/training.md says why it is not used).
It runs on the CPU in Pallas interpret mode, which is how the tests check it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from llama_shared.masks import same_document

Array = jax.Array
SPLASH_BLOCK = 128  # Splash's tile along both sequence axes (its default, and the lane width it needs)


def cudnn_supports(q: Array) -> bool:
    """cuDNN's fused attention runs here: a GPU, half-precision inputs, head_dim a multiple of 8 up to 128."""
    return (q.dtype in (jnp.bfloat16, jnp.float16) and jax.default_backend() == "gpu"
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128)


def packed_attention(q: Array, k: Array, v: Array, segment_ids: Array) -> Array | None:
    """Causal attention within documents by the backend's fused kernel, or None where none applies.

    Splash runs off-mesh only: a Pallas call is not partitioned by jit's sharding propagation (it
    would need shard_map over the batch and heads), so on a mesh the XLA path keeps the sharding.
    """
    off_mesh = jax.sharding.get_abstract_mesh().empty
    if jax.default_backend() == "tpu" and off_mesh and splash_supports(q.shape[1]):
        return splash_attention(q, k, v, segment_ids)
    if cudnn_supports(q):
        return jax.nn.dot_product_attention(q, k, v, mask=same_document(segment_ids), is_causal=True,
                                            implementation="cudnn")
    return None


def splash_supports(seq: int) -> bool:
    """Splash tiles the sequence: rows of a whole number of tiles."""
    return seq % SPLASH_BLOCK == 0


@functools.lru_cache(maxsize=None)
def _splash_kernel(seq: int, heads: int, interpret: bool) -> splash.splash_attention_kernel.SplashAttentionKernel:
    block = SPLASH_BLOCK
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.CausalMask((seq, seq)) for _ in range(heads)])
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, interpret: bool = False) -> Array:
    """Splash attention on (batch, seq, heads, head_dim) arrays, causal within documents; K/V keep
    their kv heads (Splash groups the query heads itself). interpret=True runs the Pallas kernel
    on any backend (the CPU tests)."""
    batch, seq, heads, head_dim = q.shape
    kernel = _splash_kernel(seq, heads, interpret)
    scaled = (q.astype(jnp.float32) * head_dim ** -0.5).astype(q.dtype)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
    segments = splash.SegmentIds(segment_ids.astype(jnp.int32), segment_ids.astype(jnp.int32))
    out = jax.vmap(kernel)(heads_first(scaled), heads_first(k), heads_first(v), segments)
    return heads_first(out)
