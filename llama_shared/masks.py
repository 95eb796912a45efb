"""Attention-mask rules shared by both backends (and the visualizer).

The functions use only indexing, comparison and logical operators, so the same code runs on numpy
arrays, jax arrays and torch tensors.

Packed rows: segment_ids (batch, seq) give each token its document's id (0 for padding after the
last document, by the packing pipeline's convention); a token attends only to earlier tokens of its
own document, and position ids restart at each document's first token.
"""

from __future__ import annotations

from typing import Any

from llama_shared.errors import InputError


def attention_allowed(query_slots: Any, key_slots: Any, attention_mask: Any = None, segment_ids: Any = None) -> Any:
    """Boolean (batch, 1, queries, keys) grid: may query q attend to key k?

    query_slots: (queries,) or (batch, queries) cache slots of the queries; key_slots: (keys,).
    attention_mask: (batch, m), nonzero for real tokens and zero for padding, covering the first m
    key slots; slots past m (filled later by generation) count as real. A query sees keys at or
    before its own slot (causal) that are not padding; the padding rule applies to keys only, as
    in transformers. segment_ids (batch, seq), for a call without a cache (slots are the row's
    positions), keeps each query to its own document's keys.
    """
    allowed = key_slots[None, None, :] <= query_slots[..., :, None]
    if attention_mask is not None:
        m = attention_mask.shape[-1]
        real = (attention_mask[:, key_slots.clip(max=m - 1)] != 0) | (key_slots >= m)
        allowed = allowed & real[:, None, :]
    if segment_ids is not None:
        allowed = allowed & same_document(segment_ids)[:, 0]
    return allowed[:, None, :, :]


def same_document(segment_ids: Any) -> Any:
    """(batch, 1, seq, seq) grid: are query q and key k in the same document (equal segment ids)?"""
    return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


def model_attention_allowed(attention_mask: Any, cache_position: Any, key_slots: Any, cached: bool,
                            segment_ids: Any = None) -> Any:
    """The grid a model's forward applies: a user's 4-D mask as given; None for a plainly causal call
    (no padding, no cache, no documents), so fused causal kernels can run; causal + padding +
    documents otherwise."""
    if attention_mask is not None and attention_mask.ndim == 4:
        return custom_mask_allowed(attention_mask)
    if attention_mask is None and not cached and segment_ids is None:
        return None
    return attention_allowed(cache_position, key_slots, attention_mask, segment_ids)


def is_packed_causal(attention_mask: Any, cached: bool, segment_ids: Any) -> bool:
    """True when the grid is exactly causal within documents (no padding mask, no cache): what
    segment-aware kernels (Splash, cuDNN with a document mask) compute without the grid."""
    return segment_ids is not None and attention_mask is None and not cached


def check_segment_ids(segment_ids: Any, input_shape: tuple[int, ...], cached: bool,
                      attention_mask: Any = None) -> None:
    """Raise InputError unless segment_ids is an integer (batch, seq) array matching the input and
    the call has no KV cache and no 4-D mask (documents apply to one whole packed row)."""
    if segment_ids is None:
        return
    shape, dtype = tuple(segment_ids.shape), str(segment_ids.dtype)
    if shape != tuple(input_shape):
        raise InputError(f"segment_ids has shape {shape}; expected (batch, seq) = {tuple(input_shape)}, "
                         f"the shape of input_ids")
    if "int" not in dtype:
        raise InputError(f"segment_ids has dtype {dtype}; expected an integer dtype (one document id per token)")
    if cached:
        raise InputError("segment_ids cannot be combined with past_key_values: packed rows are for "
                         "training and scoring, not generation")
    if attention_mask is not None and attention_mask.ndim == 4:
        raise InputError("segment_ids cannot be combined with a 4-D attention_mask: put the documents "
                         "into the 4-D mask instead")


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


def positions_from_segment_ids(segment_ids: Any, xp: Any, cummax: Any) -> Any:
    """Position ids that restart at 0 at each document's first token (a change of segment id).

    cummax(x) is the running maximum along the last axis in the caller's array library.
    """
    seq = segment_ids.shape[-1]
    index = (segment_ids * 0 + 1).cumsum(-1) - 1
    previous = segment_ids[:, [0, *range(seq - 1)]]
    first = (segment_ids != previous) | (index == 0)
    return index - cummax(xp.where(first, index, 0))


def custom_mask_allowed(mask: Any) -> Any:
    """A user's 4-D mask as booleans: bool masks as given; float masks allow cells equal to 0."""
    if str(mask.dtype).endswith("bool"):
        return mask
    return mask == 0
