"""Attention-mask rules shared by both backends (and the visualizer).

The functions use only indexing, comparison and logical operators, so the same code runs on numpy
arrays, jax arrays and torch tensors.
"""

from __future__ import annotations

from typing import Any


def attention_allowed(query_slots: Any, key_slots: Any, attention_mask: Any = None) -> Any:
    """Boolean (batch, 1, queries, keys) grid: may query q attend to key k?

    query_slots: (queries,) or (batch, queries) cache slots of the queries; key_slots: (keys,).
    attention_mask: (batch, m), nonzero for real tokens and zero for padding, covering the first m
    key slots; slots past m (filled later by generation) count as real. A query sees keys at or
    before its own slot (causal) that are not padding; the padding rule applies to keys only, as
    in transformers.
    """
    allowed = key_slots[None, None, :] <= query_slots[..., :, None]
    if attention_mask is not None:
        m = attention_mask.shape[-1]
        real = (attention_mask[:, key_slots.clip(max=m - 1)] != 0) | (key_slots >= m)
        allowed = allowed & real[:, None, :]
    return allowed[:, None, :, :]


def model_attention_allowed(attention_mask: Any, cache_position: Any, key_slots: Any, cached: bool) -> Any:
    """The grid a model's forward applies: a user's 4-D mask as given; None for a plainly causal call
    (no padding, no cache), so fused causal kernels can run; causal + padding otherwise."""
    if attention_mask is not None and attention_mask.ndim == 4:
        return custom_mask_allowed(attention_mask)
    if attention_mask is None and not cached:
        return None
    return attention_allowed(cache_position, key_slots, attention_mask)


def query_has_keys(allowed: Any) -> Any:
    """(batch, queries, 1, 1) flags, False for a query that may attend to no key (a left-padding query).

    Such a query's attention output is defined as zero (what transformers' SDPA path gives), so the
    twins agree with transformers even at padding positions and never produce NaN.
    """
    return allowed.any(-1)[:, 0, :, None, None]


def positions_from_attention_mask(attention_mask: Any, xp: Any) -> Any:
    """Position ids that count only real tokens (what generate uses): cumsum - 1, pads at 1."""
    positions = xp.cumsum(attention_mask, axis=-1) - 1
    return xp.where(attention_mask == 0, 1, positions)


def custom_mask_allowed(mask: Any) -> Any:
    """A user's 4-D mask as booleans: bool masks as given; float masks allow cells equal to 0."""
    if str(mask.dtype).endswith("bool"):
        return mask
    return mask == 0
