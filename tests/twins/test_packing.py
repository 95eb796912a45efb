"""Packed rows (segment_ids): in both twins a packed batch's logits and per-token losses equal each
document run alone (1e-5), positions restart per document, nothing crosses a document boundary,
and bad segment ids are refused with a clear error. Splash attention (the TPU kernel) is checked
against the XLA path in Pallas interpret mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llama_flax import kernels
from llama_flax.modeling import causal_lm_token_losses as flax_token_losses
from llama_shared.errors import InputError
from llama_shared.heads import IGNORE_INDEX, packed_labels
from llama_shared.masks import attention_allowed, positions_from_segment_ids
from llama_torch.modeling import causal_lm_token_losses as torch_token_losses

TOLERANCE = 1e-5
# two rows of 16: documents of 5, 7 and 4 padding tokens (segment 0); of 3, 3 and 10
LENGTHS = ([5, 7], [3, 3, 10])
SEQ = 16


def packed_batch(seed: int = 0):
    """ids, segment_ids and the documents ([(row, start, ids)]) of the packed batch."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((2, SEQ), np.int64)
    segments = np.zeros((2, SEQ), np.int64)
    documents = []
    for row, lengths in enumerate(LENGTHS):
        start = 0
        for number, length in enumerate(lengths, 1):
            tokens = rng.integers(3, 128, length)
            ids[row, start:start + length] = tokens
            segments[row, start:start + length] = number
            documents.append((row, start, tokens))
            start += length
    return ids, segments, documents


def run(model, ids, segment_ids=None):
    """(logits, per-token losses) of one twin as float64 numpy."""
    if isinstance(model, torch.nn.Module):
        ids_t = torch.from_numpy(ids)
        seg = None if segment_ids is None else torch.from_numpy(segment_ids)
        with torch.no_grad():
            logits = model(ids_t, segment_ids=seg).logits
            losses, _ = torch_token_losses(logits, ids_t, seg)
        return logits.double().numpy(), losses.double().numpy()
    seg = None if segment_ids is None else jnp.asarray(segment_ids)
    logits = model(ids, segment_ids=seg).logits
    losses, _ = flax_token_losses(logits, jnp.asarray(ids), seg)
    return np.asarray(logits, np.float64), np.asarray(losses, np.float64)


@pytest.mark.parametrize("twin", ["torch", "flax"])
def test_packed_logits_and_token_losses_equal_each_document_alone(twins, twin):
    model = twins[0] if twin == "torch" else twins[1]
    ids, segments, documents = packed_batch()
    logits, losses = run(model, ids, segments)
    for row, start, tokens in documents:
        alone_logits, alone_losses = run(model, tokens[None])
        end = start + len(tokens)
        assert np.max(np.abs(logits[row, start:end] - alone_logits[0])) <= TOLERANCE
        # the last token of a document predicts nothing (its successor is another document)
        assert np.max(np.abs(losses[row, start:end - 1] - alone_losses[0, :-1])) <= TOLERANCE
        assert losses[row, end - 1] == 0.0


@pytest.mark.parametrize("twin", ["torch", "flax"])
def test_changing_one_document_moves_no_other_documents_logits(twins, twin):
    model = twins[0] if twin == "torch" else twins[1]
    ids, segments, documents = packed_batch()
    logits, _ = run(model, ids, segments)
    changed = ids.copy()
    changed[1, 3:6] = (changed[1, 3:6] + 7) % 125 + 3    # the second document of row 1
    new_logits, _ = run(model, changed, segments)
    assert np.max(np.abs(new_logits[1, 3:6] - logits[1, 3:6])) > 1e-3     # the document itself moved
    assert np.array_equal(new_logits[1, :3], logits[1, :3])
    assert np.array_equal(new_logits[1, 6:], logits[1, 6:])
    assert np.array_equal(new_logits[0], logits[0])


def test_packed_losses_of_the_twins_agree(twins):
    ids, segments, _ = packed_batch()
    torch_model, flax_model = twins
    with torch.no_grad():
        loss_t = torch_model(torch.from_numpy(ids), labels=torch.from_numpy(ids),
                             segment_ids=torch.from_numpy(segments)).loss
    loss_f = flax_model(ids, labels=jnp.asarray(ids), segment_ids=jnp.asarray(segments)).loss
    assert abs(float(loss_t) - float(loss_f)) <= TOLERANCE


def test_positions_restart_at_each_document_in_every_array_library():
    segments = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [4, 4, 4, 4, 4, 4, 4, 4]])
    expected = np.array([[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    assert np.array_equal(positions_from_segment_ids(segments, np, lambda x: np.maximum.accumulate(x, -1)), expected)
    got = positions_from_segment_ids(jnp.asarray(segments), jnp, lambda x: jax.lax.cummax(x, axis=1))
    assert np.array_equal(np.asarray(got), expected)
    got = positions_from_segment_ids(torch.from_numpy(segments), torch, lambda x: torch.cummax(x, -1).values)
    assert np.array_equal(got.numpy(), expected)


def test_labels_ignore_padding_and_each_documents_first_token():
    segments = np.array([[1, 1, 2, 2, 2, 0]])
    labels = packed_labels(np.arange(10, 16)[None], segments, np)
    assert labels.tolist() == [[10, 11, IGNORE_INDEX, 13, 14, IGNORE_INDEX]]


def test_the_mask_keeps_each_query_in_its_document():
    segments = np.array([[1, 1, 2, 2]])
    allowed = attention_allowed(np.arange(4), np.arange(4), None, segments)[0, 0]
    assert allowed.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]


@pytest.mark.parametrize("twin", ["torch", "flax"])
def test_bad_segment_ids_are_refused(twins, twin):
    model = twins[0] if twin == "torch" else twins[1]
    ids, segments, _ = packed_batch()
    as_array = torch.from_numpy if twin == "torch" else jnp.asarray
    with pytest.raises(InputError, match=r"segment_ids has shape \(2, 15\); expected \(batch, seq\) = \(2, 16\)"):
        model(as_array(ids), segment_ids=as_array(segments[:, :15]))
    with pytest.raises(InputError, match="segment_ids has dtype .*float.*expected an integer dtype"):
        model(as_array(ids), segment_ids=as_array(segments.astype(np.float32)))


def test_splash_attention_in_interpret_mode_equals_the_masked_xla_path():
    """The TPU kernel, run by Pallas' interpreter on the CPU: outputs and gradients (GQA, 3 documents
    and padding in a row of one 128-token tile)."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 128, heads, 16)), jnp.float32) for heads in (4, 2, 2))
    segments = jnp.asarray(np.repeat([1, 1, 2, 3, 3, 3, 0, 0], 16)[None])
    allowed = attention_allowed(jnp.arange(128), jnp.arange(128), None, segments)

    def xla(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=allowed)

    def splash(q, k, v):
        return kernels.splash_attention(q, k, v, segments, interpret=True)

    assert float(jnp.max(jnp.abs(splash(q, k, v) - xla(q, k, v)))) <= TOLERANCE
    grads = jax.grad(lambda *a: jnp.sum(splash(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
    expected = jax.grad(lambda *a: jnp.sum(xla(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
    assert max(float(jnp.max(jnp.abs(g - e))) for g, e in zip(grads, expected)) <= TOLERANCE


def test_no_packed_kernel_is_picked_on_the_cpu():
    q = jnp.zeros((1, 128, 4, 16), jnp.bfloat16)
    assert not kernels.cudnn_supports(q)
    assert kernels.packed_attention(q, q[:, :, :2], q[:, :, :2], jnp.ones((1, 128), jnp.int32)) is None
