"""Attention-mask rules shared by both backends (and the visualizer).

The functions use only indexing, comparison and logical operators, so the same code runs on numpy
arrays, jax arrays and torch tensors.
"""

from __future__ import annotations

from typing import Any


def attention_allowed(query_slots: Any, key_slots: Any, key_valid: Any) -> Any:
    """Boolean (batch, 1, queries, keys) grid: may query q attend to key k?

    query_slots: (queries,) or (batch, queries) cache slots of the queries; key_slots: (keys,);
    key_valid: (batch, keys), False for padding. A query sees keys at or before its own slot
    (causal) that are not padding; the padding rule applies to keys only, as in transformers.
    """
    q = query_slots[..., :, None]
    k = key_slots[None, None, :]
    return ((k <= q) & key_valid[:, None, :])[:, None, :, :]


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
