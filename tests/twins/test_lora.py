"""LoRA adapters in both twins against Hugging Face PEFT (the oracle): adapters PEFT created and saved
(random, non-zero B) and adapters the Flax trainer trained and saved, on MHA and GQA configs, with
and without lm_head; merging; QLoRA; bad input refused before anything compiles."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from llama_flax import FlaxLlamaForCausalLM
from llama_flax.training import TrainConfig, Trainer
from llama_shared.errors import CheckpointError, ConfigError
from llama_shared.lora import LoraConfig
from llama_torch import LlamaForCausalLM

try:
    import peft
except ImportError:  # the tests fail, never pass or skip, without their oracle
    peft = None

TOL = 1e-4
CASES = {"mha": dict(num_key_value_heads=4), "gqa": dict()}
TARGETS = {"layers": ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"),
           "lm_head": ("q_proj", "v_proj", "up_proj", "lm_head")}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def require_peft():
    if peft is None:
        pytest.fail("peft, the oracle of these tests, is not installed: pip install -e '.[test]'")


def batch(vocab: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Two rows of 12 tokens, the second left-padded by 3."""
    ids = np.random.default_rng(5).integers(3, vocab, (2, 12))
    mask = np.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


def valid(logits, mask: np.ndarray) -> np.ndarray:
    return np.asarray(logits, np.float64)[mask.astype(bool)]


def peft_logits(base_dir: str, adapter_dir: str) -> np.ndarray:
    """Logits of transformers' model with the adapter, as PEFT loads it."""
    ids, mask = batch()
    model = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    with torch.no_grad():
        return valid(model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits, mask)


def twin_logits(model) -> np.ndarray:
    ids, mask = batch()
    if isinstance(model, FlaxLlamaForCausalLM):
        return valid(model(ids, mask).logits, mask)
    with torch.no_grad():
        return valid(model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits, mask)


def save_peft_adapter(base_dir: str, folder, targets, seed: int = 0, **settings) -> str:
    """An adapter PEFT creates with random A and B (init_lora_weights=False) and saves."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM.from_pretrained(base_dir)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False,
                             task_type="CAUSAL_LM", **settings)
    peft.get_peft_model(model, config).save_pretrained(folder)
    return str(folder)


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("targets", sorted(TARGETS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_both_twins_equal_peft_on_an_adapter_peft_saved(hf_checkpoint, tmp_path, case, targets):
    base = hf_checkpoint(**CASES[case])
    adapter = save_peft_adapter(base, tmp_path / "adapter", TARGETS[targets], use_rslora=targets == "lm_head")
    expected = peft_logits(base, adapter)
    assert max_difference(twin_logits(LlamaForCausalLM.from_pretrained(base, adapter=adapter)), expected) <= TOL
    assert max_difference(twin_logits(FlaxLlamaForCausalLM.from_pretrained(base, adapter=adapter)), expected) <= TOL
    assert max_difference(twin_logits(LlamaForCausalLM.from_pretrained(base)), expected) > 1e-2  # the adapter counts


@pytest.mark.parametrize("targets", sorted(TARGETS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_and_both_twins_equal_an_adapter_the_flax_trainer_saved(hf_checkpoint, tmp_path, case, targets):
    base = hf_checkpoint(**CASES[case])
    model = FlaxLlamaForCausalLM.from_pretrained(base)
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=TARGETS[targets],
                                 use_rslora=targets == "layers"))
    trainer = Trainer(model, TrainConfig(learning_rate=3e-2, warmup_steps=0, total_steps=3))
    state = trainer.init_state()
    ids = np.random.default_rng(0).integers(3, 128, (4, 16))
    for _ in range(3):
        state, _ = trainer.step(state, {"input_ids": ids})
    model.params = trainer.model_params(state)
    model.save_adapter(tmp_path / "trained")
    trained_b = [np.abs(np.asarray(leaf)).max() for path, leaf in jax.tree_util.tree_leaves_with_path(model.params)
                 if "lora_B" in jax.tree_util.keystr(path)]
    assert len(trained_b) == 2 * len(TARGETS[targets]) - ("lm_head" in TARGETS[targets]) and min(trained_b) > 0

    expected = twin_logits(model)
    assert max_difference(peft_logits(base, tmp_path / "trained"), expected) <= TOL
    assert max_difference(twin_logits(LlamaForCausalLM.from_pretrained(base, adapter=tmp_path / "trained")),
                          expected) <= TOL
    saved = json.loads((tmp_path / "trained" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == base and saved["lora_dropout"] == 0.1


def test_an_adapter_put_on_an_eval_model_applies_no_dropout(hf_checkpoint, tmp_path):
    base = hf_checkpoint()
    adapter = save_peft_adapter(base, tmp_path / "adapter", ("q_proj", "v_proj"), lora_dropout=0.5)
    model = LlamaForCausalLM.from_pretrained(base)   # in eval mode
    model.load_adapter(adapter)
    assert max_difference(twin_logits(model), peft_logits(base, adapter)) <= TOL
    model.train()
    assert max_difference(twin_logits(model), twin_logits(model)) > 0   # dropout in train mode


def test_a_tied_lm_head_adapter_equals_peft_and_is_not_merged(hf_checkpoint, tmp_path):
    base = hf_checkpoint(tie_word_embeddings=True)
    adapter = save_peft_adapter(base, tmp_path / "adapter", ("q_proj", "lm_head"))
    expected = peft_logits(base, adapter)
    for model in (LlamaForCausalLM.from_pretrained(base, adapter=adapter),
                  FlaxLlamaForCausalLM.from_pretrained(base, adapter=adapter)):
        assert max_difference(twin_logits(model), expected) <= TOL
        with pytest.raises(ConfigError, match="tied lm_head cannot be merged"):
            model.merge_adapter()


def test_merged_equals_unmerged_and_unmerge_restores_the_base_bit_for_bit(hf_checkpoint, tmp_path):
    base = hf_checkpoint()
    adapter = save_peft_adapter(base, tmp_path / "adapter", ("q_proj", "v_proj", "o_proj", "up_proj", "lm_head"))
    torch_model = LlamaForCausalLM.from_pretrained(base, adapter=adapter)
    flax_model = FlaxLlamaForCausalLM.from_pretrained(base, adapter=adapter, scan_layers=True)
    for model in (torch_model, flax_model):
        before = twin_logits(model)
        weights = ({k: v.clone() for k, v in model.state_dict().items()} if model is torch_model
                   else jax.tree.map(np.array, model.params))
        model.merge_adapter()
        assert max_difference(twin_logits(model), before) <= 1e-5
        with pytest.raises(ConfigError, match="no unmerged adapter"):
            model.merge_adapter()
        model.unmerge_adapter()
        if model is torch_model:
            assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
        else:
            assert jax.tree.all(jax.tree.map(np.array_equal, weights, jax.tree.map(np.asarray, model.params)))
        assert np.array_equal(twin_logits(model), before)

    with pytest.raises(ConfigError, match="carries a LoRA adapter"):
        flax_model.save_pretrained(tmp_path / "refused")
    expected = twin_logits(flax_model)
    flax_model.merge_and_unload().save_pretrained(tmp_path / "merged-flax")
    torch_model.merge_and_unload().save_pretrained(tmp_path / "merged-torch")
    for folder in ("merged-flax", "merged-torch"):
        merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / folder).eval()
        assert max_difference(twin_logits(merged), expected) <= 1e-5
        assert not any("lora" in key for key in merged.state_dict())


def test_qlora_twins_agree_over_an_int4_base(hf_checkpoint, tmp_path):
    base = hf_checkpoint()
    adapter = save_peft_adapter(base, tmp_path / "adapter", ("q_proj", "v_proj", "down_proj", "lm_head"))
    torch_model = LlamaForCausalLM.from_pretrained(base, quantization="int4", group_size=32, adapter=adapter)
    flax_model = FlaxLlamaForCausalLM.from_pretrained(base, quantization="int4", group_size=32, adapter=adapter)
    q_proj = flax_model.params["model"]["layers"]["0"]["self_attn"]["q_proj"]
    assert q_proj["qweight"].dtype == np.uint8 and "kernel" not in q_proj
    assert q_proj["lora_A"]["kernel"].shape == (64, 4)
    assert max_difference(twin_logits(torch_model), twin_logits(flax_model)) <= TOL
    float_logits = twin_logits(LlamaForCausalLM.from_pretrained(base, adapter=adapter))
    assert max_difference(twin_logits(flax_model), float_logits) > 0  # the base is quantized
    with pytest.raises(ConfigError, match="quantized base"):
        flax_model.merge_adapter()


@pytest.fixture()
def compiles():
    """A list that collects one entry per XLA compilation while the test runs."""
    seen = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)


def write_foreign_adapter(folder) -> str:
    """A GPT-2 adapter: its target modules and keys have no counterpart in a Llama model."""
    folder.mkdir()
    config = {**LoraConfig(r=4).to_dict(), "target_modules": ["c_attn"], "base_model_name_or_path": "gpt2"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file({"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": np.zeros((4, 768), np.float32),
               "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight": np.zeros((2304, 4), np.float32)},
              str(folder / "adapter_model.safetensors"))
    return str(folder)


def test_bad_adapters_are_refused_before_anything_compiles(hf_checkpoint, tmp_path, compiles):
    base = hf_checkpoint()
    models = (LlamaForCausalLM.from_pretrained(base), FlaxLlamaForCausalLM.from_pretrained(base))
    other_shape = save_peft_adapter(hf_checkpoint(hidden_size=32), tmp_path / "other-shape", ("q_proj", "v_proj"))
    foreign = write_foreign_adapter(tmp_path / "gpt2")
    compiles.clear()
    for model in models:
        with pytest.raises(ConfigError, match="'qkv_proj' is not a linear layer"):
            model.add_adapter(LoraConfig(target_modules=("q_proj", "qkv_proj")))
        with pytest.raises(ConfigError, match="rank r must be a positive integer"):
            model.add_adapter(LoraConfig(r=0))
        with pytest.raises(CheckpointError, match=r"q_proj.lora_A.weight' .* has shape \(4, 32\), but the base "
                                                  r"model expects \(4, 64\)"):
            model.load_adapter(other_shape)
        with pytest.raises(ConfigError, match="'c_attn' is not a linear layer of a Llama model.*made for gpt2"):
            model.load_adapter(foreign)
        assert model.adapter_config is None
    assert compiles == []
