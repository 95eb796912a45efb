"""llama_flax.training: the loss falls, accumulation equals one large batch, remat and mixed precision,
Orbax resume, and the `llama-twin train` command."""

from __future__ import annotations

import json
import string

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llama_flax.modeling import FlaxLlamaForCausalLM
from llama_flax.training import (TrainConfig, Trainer, learning_rate_schedule, make_optimizer, token_batches,
                                 train)

# AdamW's first step is lr * g / (|g| + eps): a larger eps keeps float32 rounding of near-zero gradients
# (sums in another order) from being magnified past the tolerance when two computations are compared.
EXACT = dict(learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=1e-3)


@pytest.fixture(scope="module")
def model_dir(hf_checkpoint):
    return hf_checkpoint()


@pytest.fixture()
def model(model_dir):
    return FlaxLlamaForCausalLM.from_pretrained(model_dir)


def padded_batch(rows: int = 8, seq: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens; rows 1 and rows - 2 left-padded, so micro-batches hold different numbers of targets."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 128, (rows, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :7] = 0
    mask[rows - 2, :12] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def max_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_loss_falls_on_a_small_corpus(model):
    corpus = np.tile(np.random.default_rng(1).integers(3, 128, 40), 30)
    config = TrainConfig(learning_rate=3e-3, warmup_steps=3, total_steps=25)
    result = train(model, token_batches(corpus, 8, 32), steps=25, config=config)
    assert len(result.losses) == 25
    assert np.mean(result.losses[-3:]) < 0.5 * np.mean(result.losses[:3]), result.losses
    assert model.params is result.params


def test_four_micro_batches_equal_one_large_batch(model):
    batch = padded_batch()
    batch["attention_mask"][[1, 5]] = 0  # micro-batch 1 (rows 1 and 5 of 8, every 4th row) holds no target
    config = TrainConfig(**EXACT)
    trainer = Trainer(model, TrainConfig(**EXACT, accumulation_steps=4))
    state, metrics = trainer.step(trainer.init_state(), batch)

    # the reference: one gradient of the model's own mean loss over the whole batch, then optax
    labels = np.where(batch["attention_mask"] == 0, -100, batch["input_ids"])
    optimizer = make_optimizer(config)

    @jax.jit
    def reference(params, input_ids, attention_mask, labels):
        loss, grads = jax.value_and_grad(lambda p: model.module.apply(
            {"params": p}, input_ids, attention_mask, labels=labels).loss)(params)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return loss, optax.tree.norm(grads), optax.apply_updates(params, updates)

    loss, grad_norm, expected = reference(model.params, batch["input_ids"], batch["attention_mask"], labels)
    assert np.isfinite(float(metrics["loss"]))
    assert abs(float(metrics["loss"]) - float(loss)) <= 1e-5
    assert abs(float(metrics["grad_norm"]) - float(grad_norm)) <= 1e-5
    assert max_difference(state.params, expected) <= 1e-5
    assert int(metrics["tokens"]) == int(np.sum(labels[:, 1:] != -100))


def test_remat_policies_give_the_same_step(model):
    batch = padded_batch()
    plain = Trainer(model, TrainConfig(**EXACT))
    expected, _ = plain.step(plain.init_state(), batch)
    for policy in ("full", "dots_saveable"):
        remat = Trainer(model, TrainConfig(**EXACT, remat_policy=policy))
        state, _ = remat.step(remat.init_state(), batch)
        assert max_difference(state.params, expected.params) <= 1e-6, policy


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat_policy"):
        TrainConfig(remat_policy="everything")


def test_bf16_compute_keeps_float32_master_weights(model):
    batch = padded_batch()
    labels = np.where(batch["attention_mask"] == 0, -100, batch["input_ids"])
    float32_loss = float(model(batch["input_ids"], batch["attention_mask"], labels=labels).loss)
    mixed = Trainer(model, TrainConfig(**EXACT, compute_dtype="bfloat16"))
    state, metrics = mixed.step(mixed.init_state(), batch)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim)
    assert 1e-4 < abs(float(metrics["loss"]) - float32_loss) < 0.05  # computed in bfloat16, but close
    bf16 = Trainer(model, TrainConfig(**EXACT, master_dtype="bfloat16"))
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(bf16.init_state().params))


def test_schedule_warms_up_then_decays_to_the_final_ratio():
    config = TrainConfig(learning_rate=1e-3, warmup_steps=10, total_steps=100, final_learning_rate_ratio=0.1)
    schedule = learning_rate_schedule(config)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(100)) == pytest.approx(1e-4)


def test_weight_decay_spares_norms(model):
    config = TrainConfig(learning_rate=1e-1, warmup_steps=0, weight_decay=0.5, max_grad_norm=None)
    optimizer = make_optimizer(config)
    zero_grads = jax.tree.map(jnp.zeros_like, model.params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(model.params), model.params)
    assert float(jnp.max(jnp.abs(updates["model"]["norm"]["weight"]))) == 0.0
    kernel = model.params["model"]["layers"]["0"]["mlp"]["up_proj"]["kernel"]
    np.testing.assert_allclose(updates["model"]["layers"]["0"]["mlp"]["up_proj"]["kernel"], -0.05 * kernel,
                               rtol=1e-6)


def test_orbax_save_then_restore_resumes_bit_exactly(model, tmp_path):
    config = TrainConfig(learning_rate=1e-3, warmup_steps=2, total_steps=10)
    batches = [padded_batch(seed=s) for s in range(4)]
    trainer = Trainer(model, config)
    state, _ = trainer.fit(trainer.init_state(), batches[:2], 2)
    trainer.save(tmp_path / "state", state)
    with pytest.raises(FileExistsError):
        trainer.save(tmp_path / "state", state)
    continued, losses = trainer.fit(state, batches[2:], 2)

    restored = trainer.restore(tmp_path / "state")
    assert int(restored.step) == 2
    resumed, resumed_losses = trainer.fit(restored, batches[2:], 2)
    assert resumed_losses == losses
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(continued)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def char_tokenizer(directory) -> int:
    """A character-level fast tokenizer small enough for the tiny model's 128-token vocabulary, in
    directory (made if missing); returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for char in string.ascii_letters + string.digits + " .,;:!?'-\n":
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return len(vocab)


def reported_losses(printed: str) -> tuple[float, float]:
    """(first, last) of the "loss A -> B" line `llama-twin train` prints last."""
    first, last = printed.split("\nloss ")[-1].split(";")[0].split(" -> ")
    return float(first), float(last)


def test_cli_train_logs_saves_and_resumes(model_dir, tmp_path, capsys):
    from llama_twin.cli import main
    from llama_shared.tokenizers import AutoTokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    char_tokenizer(tokenizer_dir)
    text = tmp_path / "corpus.txt"
    text.write_text("The cat sat on the mat. The dog sat on the log.\n" * 60)
    common = [model_dir, str(text), "--tokenizer", str(tokenizer_dir), "--steps", "12", "--batch-size", "4",
              "--seq-len", "32", "--learning-rate", "3e-3", "--log-every", "6"]
    assert main(["train", *common, "--output", str(tmp_path / "out"), "--save-state", str(tmp_path / "state")]) == 0
    printed = capsys.readouterr().out
    assert "step 6 loss" in printed and "tokens/s" in printed
    first, last = reported_losses(printed)
    assert last < first

    trained = FlaxLlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert AutoTokenizer.from_pretrained(tmp_path / "out").encode("cat") == \
        AutoTokenizer.from_pretrained(tokenizer_dir).encode("cat")
    original = FlaxLlamaForCausalLM.from_pretrained(model_dir)
    assert max_difference(trained.params, original.params) > 1e-3

    with pytest.raises(SystemExit, match="not empty"):
        main(["train", *common, "--output", str(tmp_path / "out")])
    assert main(["train", *common, "--output", str(tmp_path / "resumed"), "--resume", str(tmp_path / "state"),
                 "--steps", "14"]) == 0
    assert "2 steps of 4 x 32 tokens from step 12" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="at step 12"):
        main(["train", *common, "--output", str(tmp_path / "again"), "--resume", str(tmp_path / "state")])


def test_a_packed_step_scores_each_document_as_if_alone(model):
    """A packed batch's loss is the mean over its documents' own targets: no document's first token
    is predicted from the one before, padding (segment 0) is never a target."""
    from llama_flax.modeling import causal_lm_token_losses

    rng = np.random.default_rng(3)
    documents = [rng.integers(3, 128, n).astype(np.int32) for n in (5, 7, 3, 9, 4)]
    ids, segments = np.zeros((2, 16), np.int32), np.zeros((2, 16), np.int32)
    for row, placed in enumerate(([0, 1], [2, 3, 4])):
        start = 0
        for number, index in enumerate(placed, 1):
            ids[row, start:start + len(documents[index])] = documents[index]
            segments[row, start:start + len(documents[index])] = number
            start += len(documents[index])
    total, count = 0.0, 0
    for document in documents:
        logits = model(document[None]).logits
        losses, keep = causal_lm_token_losses(logits, jnp.asarray(document[None]))
        total, count = total + float(jnp.sum(losses)), count + int(jnp.sum(keep))
    trainer = Trainer(model, TrainConfig(**EXACT))
    _, metrics = trainer.step(trainer.init_state(), {"input_ids": ids, "segment_ids": segments})
    assert int(metrics["tokens"]) == count == sum(len(d) - 1 for d in documents)
    assert abs(float(metrics["loss"]) - total / count) <= 1e-5


def test_cli_train_packed_documents_with_scanned_layers(model_dir, tmp_path, capsys):
    """--packed reads the file's documents into packed rows, --scan-layers trains the scanned model;
    the output folder holds the usual per-layer tensors."""
    pytest.importorskip("grain")
    from llama_shared.checkpoints import Checkpoint
    from llama_twin.cli import main

    tokenizer_dir = tmp_path / "tokenizer"
    char_tokenizer(tokenizer_dir)
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(["The cat sat on the mat.", "The dog sat on the log.", "A cat; a dog."] * 20))
    assert main(["train", model_dir, str(text), "--tokenizer", str(tokenizer_dir), "--steps", "6", "--batch-size",
                 "2", "--seq-len", "32", "--learning-rate", "3e-3", "--packed", "--scan-layers",
                 "--output", str(tmp_path / "out")]) == 0
    first, last = reported_losses(capsys.readouterr().out)
    assert last < first
    assert sorted(Checkpoint(str(tmp_path / "out")).keys()) == sorted(Checkpoint(model_dir).keys())
