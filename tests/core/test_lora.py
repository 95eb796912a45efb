"""llama_shared.lora: LoRA settings, target resolution, adapter_config.json and adapter folders, and
the errors bad settings and files get. Both twins against PEFT: tests/twins/test_lora.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llama_shared import lora
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError
from llama_shared.lora import LoraConfig

CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)


def test_scaling_is_alpha_over_r_or_over_sqrt_r_with_rslora():
    assert LoraConfig(r=16, lora_alpha=32).scaling == 2.0
    assert LoraConfig(r=16, lora_alpha=32, use_rslora=True).scaling == 8.0
    assert lora.init_bound(400) == 1 / math.sqrt(400)


@pytest.mark.parametrize("fields, message", [
    (dict(r=0), "rank r must be a positive integer"),
    (dict(r=-4), "rank r must be a positive integer"),
    (dict(r=2.5), "rank r must be a positive integer"),
    (dict(lora_alpha=0), "lora_alpha must be a positive number"),
    (dict(lora_dropout=1.0), r"lora_dropout must lie in \[0, 1\)"),
    (dict(target_modules=()), "target_modules must be"),
    (dict(task_type="SEQ_CLS"), "task_type 'SEQ_CLS'"),
])
def test_bad_settings_are_refused_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        LoraConfig(**fields)


@pytest.mark.parametrize("targets, names", [
    (("q_proj", "v_proj"), ("q_proj", "v_proj")),
    (("self_attn.o_proj", "lm_head"), ("lm_head", "o_proj")),
    ("all-linear", ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")),
    (r".*\.mlp\.(up|down)_proj", ("down_proj", "up_proj")),
])
def test_targets_resolve_to_leaf_names_as_peft_matches_them(targets, names):
    assert LoraConfig(target_modules=targets).resolve(CONFIG).target_modules == names


def test_a_target_of_another_architecture_is_named_with_the_base_it_was_made_for():
    with pytest.raises(ConfigError, match=r"'c_attn' is not a linear layer of a Llama model.*made for gpt2"):
        LoraConfig(target_modules=("c_attn",), base_model_name_or_path="gpt2").resolve(CONFIG)
    with pytest.raises(ConfigError, match="matches no linear layer"):
        LoraConfig(target_modules=r".*query_key_value").resolve(CONFIG)


def test_a_selection_of_some_layers_only_is_refused():
    with pytest.raises(ConfigError, match="select q_proj in some layers but not in 'model.layers.1.self_attn.q_proj'"):
        LoraConfig(target_modules=r"model\.layers\.0\.self_attn\.q_proj").resolve(CONFIG)


def test_config_json_round_trip_and_peft_fields_that_change_the_math_are_refused():
    config = LoraConfig(r=4, lora_alpha=12, lora_dropout=0.05, target_modules=("q_proj", "v_proj"), use_rslora=True,
                        base_model_name_or_path="demo")
    data = config.to_dict()
    assert data["peft_type"] == "LORA" and data["task_type"] == "CAUSAL_LM"
    assert data["target_modules"] == ["q_proj", "v_proj"]
    assert LoraConfig.from_dict(json.loads(json.dumps(data)), "x") == config
    with pytest.raises(ConfigError, match="use_dora=True is not supported"):
        LoraConfig.from_dict({**data, "use_dora": True}, "adapter_config.json")
    with pytest.raises(ConfigError, match="layers_to_transform"):
        LoraConfig.from_dict({**data, "layers_to_transform": [0]}, "adapter_config.json")
    with pytest.raises(ConfigError, match="peft_type 'IA3' is not a LoRA adapter"):
        LoraConfig.from_dict({**data, "peft_type": "IA3"}, "adapter_config.json")


def test_a_module_config_carries_the_resolved_adapter_and_config_json_never_does():
    carried = lora.with_adapter(CONFIG, LoraConfig(target_modules="all-linear"))
    assert lora.config_adapter(carried).target_modules[0] == "down_proj"
    assert lora.config_adapter(CONFIG) is None and lora.config_adapter(lora.with_adapter(carried, None)) is None
    assert lora.CONFIG_KEY not in CONFIG.to_dict()


def test_adapter_folder_round_trip_and_checks(tmp_path):
    config = LoraConfig(r=2, target_modules=("q_proj",))
    a, b = np.arange(64, dtype=np.float32).reshape(2, 32), np.ones((32, 2), np.float32)
    tensors = [("model.layers.0.self_attn.q_proj.lora_A.weight", a),
               ("model.layers.0.self_attn.q_proj.lora_B.weight", b)]
    lora.write_adapter(tmp_path, config, tensors)
    files = lora.read_adapter(tmp_path, CONFIG)
    assert files.config == config and np.array_equal(files.tensors[tensors[0][0]], a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    with pytest.raises(FileExistsError, match="never written over"):
        lora.write_adapter(tmp_path, config, tensors)

    expected = {tensors[0][0]: (2, 32), tensors[1][0]: (32, 2)}
    lora.check_adapter_tensors(expected, files)
    with pytest.raises(CheckpointError, match=r"q_proj.lora_A.weight' .* has shape \(2, 32\), but the base model "
                                              r"expects \(2, 16\)"):
        lora.check_adapter_tensors({**expected, tensors[0][0]: (2, 16)}, files)
    with pytest.raises(CheckpointError, match="lacks 'base_model.model.model.layers.1"):
        lora.check_adapter_tensors({**expected, "model.layers.1.self_attn.q_proj.lora_A.weight": (2, 32)}, files)
    with pytest.raises(CheckpointError, match="no place for"):
        lora.check_adapter_tensors({tensors[0][0]: (2, 32)}, files)


def test_a_folder_without_an_adapter_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        lora.read_adapter(tmp_path, CONFIG)
    (tmp_path / "adapter_config.json").write_text(json.dumps(LoraConfig().to_dict()))
    (tmp_path / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="adapter_model.bin is a pickle"):
        lora.read_adapter(tmp_path, CONFIG)
