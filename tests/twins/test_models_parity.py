"""Both twins against transformers' Llama on the same random weights, for every config feature.

Each case loads one saved transformers checkpoint into transformers 5, the torch twin and the Flax
twin and compares float32 logits on 300-token inputs (past every original_max_position_embeddings
of the rope cases), one row left-padded. Each case runs twice: with the config.json transformers 5
writes and with the one 4.57.6 writes for the same settings; the 4.x form is also compared with
transformers 4.57.6 itself (in its own process, tests/oracle/), except where 4.57.6 has a known bug.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from llama_flax import (FlaxLlamaForCausalLM, FlaxLlamaForQuestionAnswering, FlaxLlamaForSequenceClassification,
                        FlaxLlamaForTokenClassification, FlaxLlamaModel)
from llama_torch import (LlamaForCausalLM, LlamaForQuestionAnswering, LlamaForSequenceClassification,
                         LlamaForTokenClassification, LlamaModel)
from tests.cases import LEGACY_BUGS, MODEL_CASES

TOL = 1e-4
SEQ, PAD = 300, 37


def padded_batch(vocab: int = 128, seq: int = SEQ, pad: int = PAD, left: bool = True, seed: int = 1):
    """Two rows of random ids (never the pad id 0); row 1 carries `pad` padding tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(2, seq))
    mask = np.ones((2, seq), dtype=np.int64)
    pad_slice = slice(0, pad) if left else slice(seq - pad, seq)
    ids[1, pad_slice], mask[1, pad_slice] = 0, 0
    return ids, mask


def valid(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The positions of real tokens, flattened over the batch."""
    return np.asarray(array)[mask.astype(bool)]


def run_all(folder: str, ids: np.ndarray, mask: np.ndarray):
    hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    ours = LlamaForCausalLM.from_pretrained(folder)
    flax = FlaxLlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        expected = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        torch_logits = ours(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    flax_logits = np.asarray(flax(ids, attention_mask=mask).logits)
    return expected, torch_logits, flax_logits


def legacy_outputs(transformers_4, folder: str, model_class: str, inputs: dict, fields=("logits",)) -> dict:
    """transformers 4.57.6's outputs for numpy inputs (int64 ids and masks, labels as given)."""
    return transformers_4("outputs", folder=folder, model_class=model_class, inputs=inputs, fields=list(fields))


@pytest.mark.parametrize("form", ["5.x", "4.x"])
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_causal_lm_logits_equal_transformers(case, form, hf_checkpoint, request):
    ids, mask = padded_batch()
    folder = hf_checkpoint(config_form=form, **MODEL_CASES[case])
    expected, torch_logits, flax_logits = run_all(folder, ids, mask)
    assert np.abs(expected).max() > 0.5  # logits of order one: the tolerance is tight
    # Padding positions too: a query with no key outputs zeros in all three.
    np.testing.assert_allclose(torch_logits, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(flax_logits, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(flax_logits, torch_logits, rtol=0, atol=TOL)
    if form == "4.x" and case not in LEGACY_BUGS:
        legacy = legacy_outputs(request.getfixturevalue("transformers_4"), folder, "LlamaForCausalLM",
                                {"input_ids": ids, "attention_mask": mask})["logits"]
        np.testing.assert_allclose(torch_logits, legacy, rtol=0, atol=TOL)
        np.testing.assert_allclose(flax_logits, legacy, rtol=0, atol=TOL)


@pytest.mark.parametrize("case", sorted(LEGACY_BUGS))
def test_transformers_4_known_bugs_are_real(case, hf_checkpoint, transformers_4):
    """Where the matrix skips 4.57.6, 4.57.6 does differ from transformers 5 (and so from the twins)."""
    ids, mask = padded_batch()
    folder = hf_checkpoint(config_form="4.x", **MODEL_CASES[case])
    hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    legacy = legacy_outputs(transformers_4, folder, "LlamaForCausalLM", {"input_ids": ids, "attention_mask": mask})
    assert np.abs(legacy["logits"] - expected).max() > 1e-3


def test_right_padding_and_no_mask(hf_checkpoint):
    folder = hf_checkpoint()
    ids, mask = padded_batch(left=False)
    expected, torch_logits, flax_logits = run_all(folder, ids, mask)
    for logits in (torch_logits, flax_logits):
        np.testing.assert_allclose(valid(logits, mask), valid(expected, mask), rtol=0, atol=TOL)
    full = np.ones_like(mask)
    expected, torch_logits, flax_logits = run_all(folder, ids, full)
    for logits in (torch_logits, flax_logits):
        np.testing.assert_allclose(logits, expected, rtol=0, atol=TOL)


def test_padded_row_equals_the_unpadded_row(hf_checkpoint):
    """Left padding with positions from the mask changes nothing for the real tokens."""
    folder = hf_checkpoint()
    ids, mask = padded_batch(seq=64, pad=20)
    positions = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    alone = ids[1:, 20:]
    ours, flax = LlamaForCausalLM.from_pretrained(folder), FlaxLlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        batch_t = ours(torch.tensor(ids), torch.tensor(mask), torch.tensor(positions)).logits[1, 20:].numpy()
        alone_t = ours(torch.tensor(alone)).logits[0].numpy()
    batch_f = np.asarray(flax(ids, mask, positions).logits)[1, 20:]
    alone_f = np.asarray(flax(alone).logits)[0]
    np.testing.assert_allclose(batch_t, alone_t, rtol=0, atol=TOL)
    np.testing.assert_allclose(batch_f, alone_f, rtol=0, atol=TOL)


def test_hidden_states_inputs_embeds_and_logits_to_keep(hf_checkpoint):
    folder = hf_checkpoint()
    ids, mask = padded_batch(seq=40, pad=5)
    hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    ours, flax = LlamaForCausalLM.from_pretrained(folder), FlaxLlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
        out_t = ours(torch.tensor(ids), torch.tensor(mask), output_hidden_states=True)
        embeds = ours.model.embed_tokens(torch.tensor(ids))
        from_embeds = ours(inputs_embeds=embeds, attention_mask=torch.tensor(mask)).logits
        kept = ours(torch.tensor(ids), torch.tensor(mask), logits_to_keep=3).logits
    out_f = flax(ids, mask, output_hidden_states=True)
    kept_f = flax(ids, mask, logits_to_keep=3).logits
    embeds_f = flax(inputs_embeds=embeds.numpy(), attention_mask=mask).logits
    assert len(ref.hidden_states) == len(out_t.hidden_states) == len(out_f.hidden_states) == 3
    for expected, got_t, got_f in zip(ref.hidden_states, out_t.hidden_states, out_f.hidden_states):
        np.testing.assert_allclose(valid(got_t.numpy(), mask), valid(expected.numpy(), mask), atol=TOL, rtol=0)
        np.testing.assert_allclose(valid(got_f, mask), valid(expected.numpy(), mask), atol=TOL, rtol=0)
    np.testing.assert_allclose(from_embeds.numpy(), out_t.logits.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(embeds_f), out_t.logits.numpy(), atol=TOL, rtol=0)
    assert kept.shape == (2, 3, 128) and kept_f.shape == (2, 3, 128)
    np.testing.assert_allclose(kept.numpy(), ref.logits[:, -3:].numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(kept_f), ref.logits[:, -3:].numpy(), atol=TOL, rtol=0)


def test_causal_lm_loss_equals_transformers(hf_checkpoint):
    folder = hf_checkpoint()
    ids, mask = padded_batch(seq=48, pad=6)
    labels = np.where(mask == 1, ids, -100)
    hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels)).loss.item()
        got_t = LlamaForCausalLM.from_pretrained(folder)(torch.tensor(ids), torch.tensor(mask),
                                                         labels=torch.tensor(labels)).loss.item()
    got_f = float(FlaxLlamaForCausalLM.from_pretrained(folder)(ids, mask, labels=labels).loss)
    assert got_t == pytest.approx(expected, abs=1e-5) and got_f == pytest.approx(expected, abs=1e-5)


def test_base_model_equals_transformers(hf_checkpoint, transformers_4):
    """LlamaModel loads from a causal-LM checkpoint (the "model." prefix stripped)."""
    folder = hf_checkpoint(config_form="4.x")
    ids, mask = padded_batch(seq=32, pad=4)
    with torch.no_grad():
        expected = transformers.LlamaModel.from_pretrained(folder)(torch.tensor(ids),
                                                                   attention_mask=torch.tensor(mask))
        got_t = LlamaModel.from_pretrained(folder)(torch.tensor(ids), torch.tensor(mask))
    got_f = FlaxLlamaModel.from_pretrained(folder)(ids, mask)
    legacy = legacy_outputs(transformers_4, folder, "LlamaModel", {"input_ids": ids, "attention_mask": mask},
                            ("last_hidden_state",))["last_hidden_state"]
    for ref in (valid(expected.last_hidden_state.numpy(), mask), valid(legacy, mask)):
        np.testing.assert_allclose(valid(got_t.last_hidden_state.numpy(), mask), ref, atol=TOL, rtol=0)
        np.testing.assert_allclose(valid(got_f.last_hidden_state, mask), ref, atol=TOL, rtol=0)


HEADS = {
    "LlamaForSequenceClassification": (LlamaForSequenceClassification, FlaxLlamaForSequenceClassification),
    "LlamaForQuestionAnswering": (LlamaForQuestionAnswering, FlaxLlamaForQuestionAnswering),
    "LlamaForTokenClassification": (LlamaForTokenClassification, FlaxLlamaForTokenClassification),
}


def head_labels(name: str, ids: np.ndarray, problem: str | None) -> dict:
    rng = np.random.default_rng(3)
    if name == "LlamaForQuestionAnswering":
        return {"start_positions": rng.integers(0, ids.shape[1], 2), "end_positions": np.array([ids.shape[1] + 5, 3])}
    if name == "LlamaForTokenClassification":
        labels = rng.integers(0, 3, ids.shape)
        labels[:, :2] = -100
        return {"labels": labels}
    if problem == "regression":
        return {"labels": rng.normal(size=(2, 3)).astype(np.float32)}
    if problem == "multi_label_classification":
        return {"labels": rng.integers(0, 2, (2, 3)).astype(np.float32)}
    return {"labels": rng.integers(0, 3, 2)}


@pytest.mark.parametrize("name, problem", [
    ("LlamaForSequenceClassification", None),
    ("LlamaForSequenceClassification", "regression"),
    ("LlamaForSequenceClassification", "multi_label_classification"),
    ("LlamaForQuestionAnswering", None),
    ("LlamaForTokenClassification", None),
])
def test_task_heads_equal_transformers(name, problem, hf_checkpoint, transformers_4):
    overrides = {"num_labels": 3} if name != "LlamaForQuestionAnswering" else {}
    if problem:
        overrides["problem_type"] = problem
    folder = hf_checkpoint(model_class=name, config_form="4.x", **overrides)
    ids, mask = padded_batch(seq=24, pad=5, left=name != "LlamaForSequenceClassification")
    labels = head_labels(name, ids, problem)
    torch_cls, flax_cls = HEADS[name]
    with torch.no_grad():
        ref = getattr(transformers, name).from_pretrained(folder).eval()(
            torch.tensor(ids), attention_mask=torch.tensor(mask), **{k: torch.tensor(v) for k, v in labels.items()})
        got_t = torch_cls.from_pretrained(folder)(torch.tensor(ids), torch.tensor(mask),
                                                  **{k: torch.tensor(v) for k, v in labels.items()})
    got_f = flax_cls.from_pretrained(folder)(ids, mask, **labels)
    fields = ("start_logits", "end_logits") if name == "LlamaForQuestionAnswering" else ("logits",)
    legacy = legacy_outputs(transformers_4, folder, name, {"input_ids": ids, "attention_mask": mask, **labels},
                            (*fields, "loss"))
    for field in fields:
        rows = slice(None) if name == "LlamaForSequenceClassification" else mask.astype(bool)
        for expected in (getattr(ref, field).numpy(), legacy[field]):
            np.testing.assert_allclose(getattr(got_t, field).numpy()[rows], expected[rows], atol=TOL, rtol=0)
            np.testing.assert_allclose(np.asarray(getattr(got_f, field))[rows], expected[rows], atol=TOL, rtol=0)
    for loss in (ref.loss.item(), float(legacy["loss"])):
        assert got_t.loss.item() == pytest.approx(loss, abs=1e-5)
        assert float(got_f.loss) == pytest.approx(loss, abs=1e-5)
