"""Scanned layers (scan_layers=True): logits, hidden states, greedy ids and a train step equal the
unrolled model's (float32, 1e-5); the two param trees convert into each other bit for bit; loading
stacks and saving unstacks, so the files on disk do not change. The mesh checks are in
tests/flax/parallel_checks.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from llama_flax import FlaxLlamaForCausalLM, FlaxLlamaForSequenceClassification, quantize
from llama_flax.scan import stack_layers, unstack_layers
from llama_flax.training import TrainConfig, Trainer
from llama_shared.checkpoints import Checkpoint
from llama_shared.naming import flatten_tree

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def pair(hf_checkpoint):
    """(unrolled, scanned, folder): Flax models of the same tiny 3-layer checkpoint."""
    folder = hf_checkpoint(num_hidden_layers=3)
    scanned = FlaxLlamaForCausalLM.from_pretrained(folder, scan_layers=True)
    return FlaxLlamaForCausalLM.from_pretrained(folder), scanned, folder


def ids_and_mask():
    ids = np.random.default_rng(0).integers(3, 128, (3, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    return ids, mask


def max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_loading_stacks_every_layer_param_under_layers_scan(pair):
    unrolled, scanned, _ = pair
    layers = scanned.params["model"]["layers"]
    assert list(layers) == ["scan"]
    assert layers["scan"]["self_attn"]["q_proj"]["kernel"].shape == (3, 64, 64)
    assert layers["scan"]["input_layernorm"]["weight"].shape == (3, 64)
    assert scanned.scan_layers and not unrolled.scan_layers


def test_trees_convert_both_ways_bit_for_bit(pair):
    unrolled, scanned, _ = pair
    stacked = stack_layers(unrolled.params)
    assert jax.tree.structure(stacked) == jax.tree.structure(scanned.params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(scanned.params)))
    back = flatten_tree(unstack_layers(scanned.params))
    assert back.keys() == flatten_tree(unrolled.params).keys()
    assert all(np.array_equal(back[path], leaf) for path, leaf in flatten_tree(unrolled.params).items())


def test_logits_and_hidden_states_equal_the_unrolled_model(pair):
    unrolled, scanned, _ = pair
    ids, mask = ids_and_mask()
    expected = unrolled(ids, mask, output_hidden_states=True)
    out = scanned(ids, mask, output_hidden_states=True)
    assert max_abs_diff(out.logits, expected.logits) <= TOLERANCE
    assert len(out.hidden_states) == len(expected.hidden_states) == 4
    assert max_abs_diff(out.hidden_states, expected.hidden_states) <= TOLERANCE


def test_greedy_generation_equals_the_unrolled_model(pair):
    unrolled, scanned, _ = pair
    ids, mask = ids_and_mask()
    expected = unrolled.generate(ids, mask, max_new_tokens=8, do_sample=False)
    assert np.array_equal(scanned.generate(ids, mask, max_new_tokens=8, do_sample=False), expected)


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_a_train_step_equals_the_unrolled_model(pair, remat_policy):
    """eps 1e-3: AdamW's first step is lr * g / (|g| + eps), which magnifies float32 rounding of
    near-zero gradients; weight decay must skip the stacked norm weights as it skips per-layer ones."""
    unrolled, scanned, _ = pair
    ids, mask = ids_and_mask()
    config = TrainConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=1e-3, accumulation_steps=3,
                         remat_policy=remat_policy)
    states = []
    for model in (unrolled, scanned):
        trainer = Trainer(model, config)
        state, metrics = trainer.step(trainer.init_state(), {"input_ids": ids, "attention_mask": mask})
        states.append((state, float(metrics["loss"])))
    (state, loss), (scanned_state, scanned_loss) = states
    assert abs(loss - scanned_loss) <= TOLERANCE
    assert max_abs_diff(unstack_layers(scanned_state.params), state.params) <= TOLERANCE


def test_save_writes_the_same_files_as_the_unrolled_model(pair, tmp_path):
    unrolled, scanned, folder = pair
    unrolled.save_pretrained(tmp_path / "unrolled")
    scanned.save_pretrained(tmp_path / "scanned")
    a, b = Checkpoint(str(tmp_path / "unrolled")), Checkpoint(str(tmp_path / "scanned"))
    assert sorted(a.keys()) == sorted(b.keys()) == sorted(Checkpoint(folder).keys())
    assert all(np.array_equal(a.read(key), b.read(key)) for key in a.keys())
    reloaded = FlaxLlamaForCausalLM.from_pretrained(tmp_path / "scanned", scan_layers=True)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(reloaded.params), jax.tree.leaves(scanned.params)))


def test_task_heads_and_random_init_scan_too(pair):
    config = pair[0].config
    model = FlaxLlamaForSequenceClassification(config.replace(num_labels=3), scan_layers=True)
    ids, _ = ids_and_mask()
    unrolled = FlaxLlamaForSequenceClassification(config.replace(num_labels=3), params=unstack_layers(model.params))
    assert max_abs_diff(model(ids).logits, unrolled(ids).logits) <= TOLERANCE


def test_scanned_models_refuse_quantization(pair):
    _, _, folder = pair
    with pytest.raises(ValueError, match="quantized models run unrolled"):
        FlaxLlamaForCausalLM.from_pretrained(folder, scan_layers=True, quantization="int8")
    with pytest.raises(ValueError, match="scan_layers=True cannot be quantized"):
        quantize(FlaxLlamaForCausalLM.from_pretrained(folder, scan_layers=True), "int8")
