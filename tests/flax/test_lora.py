"""LoRA training with the Flax trainer: the loss falls and the base stays bit for bit, scanned layers,
remat and accumulation give the same step, dropout acts only in training, QLoRA keeps its int4 base,
Orbax resume, and `llama-twin train --lora`. PEFT parity: tests/twins/test_lora.py; meshes and
pmap: tests/flax/parallel_checks.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_flax.modeling import FlaxLlamaForCausalLM
from llama_flax.scan import unstack_layers
from llama_flax.training import TrainConfig, Trainer, token_batches
from llama_shared import lora
from llama_shared.lora import LoraConfig
from tests.flax.test_training import EXACT, char_tokenizer, max_difference, padded_batch, reported_losses

ADAPTER = LoraConfig(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj", "o_proj", "down_proj", "lm_head"))


@pytest.fixture(scope="module")
def model_dir(hf_checkpoint):
    return hf_checkpoint()


def host(tree):
    return jax.tree.map(np.array, tree)


def bit_identical(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_lora_run_lowers_the_loss_and_leaves_the_base_bit_identical(model_dir, tmp_path):
    model = FlaxLlamaForCausalLM.from_pretrained(model_dir)
    base = host(model.params)
    model.add_adapter(ADAPTER)
    trainer = Trainer(model, TrainConfig(learning_rate=1e-2, warmup_steps=2, total_steps=30))
    state = trainer.init_state()
    adapter_sizes = sum(leaf.size for leaf in jax.tree.leaves(lora.split_adapter(model.params)[0]))
    moments = sum(leaf.size for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim)
    assert moments == 2 * adapter_sizes  # Adam's mu and nu of the adapter, nothing of the base

    corpus = np.tile(np.random.default_rng(1).integers(3, 128, 40), 30)
    state, losses = trainer.fit(state, token_batches(corpus, 8, 32), 30)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    trained = trainer.model_params(state)
    assert bit_identical(host(lora.split_adapter(trained)[1]), base)
    assert bit_identical(host(trainer.frozen), base)

    trainer.save(tmp_path / "state", state)
    restored = trainer.restore(tmp_path / "state")
    assert bit_identical(host(restored.params), host(state.params)) and int(restored.step) == 30


def test_scanned_layers_remat_and_accumulation_give_the_same_lora_step(model_dir):
    batch = padded_batch()
    results = []
    for scan_layers, remat, accumulation in ((False, "none", 1), (True, "full", 4), (False, "dots_saveable", 2)):
        model = FlaxLlamaForCausalLM.from_pretrained(model_dir, scan_layers=scan_layers)
        model.add_adapter(ADAPTER, seed=3)
        trainer = Trainer(model, TrainConfig(**EXACT, remat_policy=remat, accumulation_steps=accumulation))
        state, metrics = trainer.step(trainer.init_state(), batch)
        results.append((float(metrics["loss"]), host(unstack_layers(state.params) if scan_layers else state.params)))
    (loss, params), *others = results
    for other_loss, other_params in others:
        assert abs(other_loss - loss) <= 1e-5 and max_difference(other_params, params) <= 1e-5


def test_dropout_acts_in_training_only(model_dir):
    model = FlaxLlamaForCausalLM.from_pretrained(model_dir)
    model.add_adapter(LoraConfig(r=4, lora_dropout=0.5, target_modules=("q_proj", "v_proj")))
    adapter, base = lora.split_adapter(model.params)
    model.params = lora.join_params(base, jax.tree.map(lambda x: jnp.full_like(x, 0.1), adapter))
    ids = padded_batch()["input_ids"]
    assert np.array_equal(model(ids).logits, model(ids).logits)  # no rng, no dropout
    apply = lambda seed: model.module.apply({"params": model.params}, ids,  # noqa: E731
                                            rngs={"dropout": jax.random.PRNGKey(seed)}).logits
    assert not np.allclose(apply(0), apply(1)) and not np.allclose(apply(0), model(ids).logits)


def test_qlora_trains_over_an_int4_base_that_stays_int4(model_dir):
    model = FlaxLlamaForCausalLM.from_pretrained(model_dir, quantization="int4", group_size=32)
    base = host(model.params)
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer = Trainer(model, TrainConfig(learning_rate=1e-2, warmup_steps=0, total_steps=20))
    corpus = np.tile(np.random.default_rng(1).integers(3, 128, 40), 30)
    state, losses = trainer.fit(trainer.init_state(), token_batches(corpus, 8, 32), 20)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert bit_identical(host(trainer.frozen), base)
    q_proj = trainer.frozen["model"]["layers"]["0"]["self_attn"]["q_proj"]
    assert q_proj["qweight"].dtype == jnp.uint8 and q_proj["qweight"].shape == (64, 32)   # two codes a byte


def test_cli_train_lora_writes_a_peft_folder_or_the_merged_model(model_dir, tmp_path, capsys):
    from llama_shared.checkpoints import Checkpoint
    from llama_twin.cli import main

    tokenizer_dir = tmp_path / "tokenizer"
    char_tokenizer(tokenizer_dir)
    text = tmp_path / "corpus.txt"
    text.write_text("The cat sat on the mat. The dog sat on the log.\n" * 60)
    common = [model_dir, str(text), "--tokenizer", str(tokenizer_dir), "--steps", "8", "--batch-size", "4",
              "--seq-len", "32", "--learning-rate", "1e-2", "--lora", "q_proj,v_proj", "--lora-rank", "4"]
    assert main(["train", *common, "--output", str(tmp_path / "adapter")]) == 0
    first, last = reported_losses(capsys.readouterr().out)
    assert last < first
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                                   "tokenizer.json"}
    adapted = FlaxLlamaForCausalLM.from_pretrained(model_dir, adapter=tmp_path / "adapter")
    assert adapted.adapter_config.target_modules == ("q_proj", "v_proj") and adapted.adapter_config.r == 4

    assert main(["train", *common, "--quantization", "int4", "--group-size", "32", "--merge",
                 "--output", str(tmp_path / "merged")]) == 0
    assert sorted(Checkpoint(str(tmp_path / "merged")).keys()) == sorted(Checkpoint(model_dir).keys())
    merged, original = (FlaxLlamaForCausalLM.from_pretrained(d) for d in (tmp_path / "merged", model_dir))
    assert max_difference(merged.params, original.params) > 0

    with pytest.raises(SystemExit, match="--merge applies to LoRA training"):
        main(["train", *common[:-4], "--merge", "--output", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="'qkv' is not a linear layer"):
        main(["train", *common[:-4], "--lora", "qkv", "--output", str(tmp_path / "y")])
