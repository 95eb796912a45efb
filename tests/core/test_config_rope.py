"""LlamaConfig against transformers' config.json (4.x and 5.x layouts) and RoPE tables against transformers."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from llama_shared import rope
from llama_shared.config import LlamaConfig
from llama_shared.errors import ConfigError
from llama_shared.presets import PRESETS
from tests.cases import ROPE_CASES

ROPE_TABLE_CASES = {
    "default": dict(),
    **ROPE_CASES,
    "yarn_mscale": dict(rope_scaling={"rope_type": "yarn", "factor": 8.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                                      "beta_fast": 16, "truncate": False}),
}
SMALL = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)


def assert_same_tables(ours: LlamaConfig, hf: HFConfig) -> None:
    """inv_freq at several lengths and the attention factor, ours against transformers 5's."""
    function = ROPE_INIT_FUNCTIONS.get(ours.rope_type, LlamaRotaryEmbedding.compute_default_rope_parameters)
    for seq_len in (None, 100, 600):
        hf_freq, hf_factor = function(hf, device="cpu", seq_len=seq_len)
        np.testing.assert_allclose(rope.inv_freq(ours, seq_len), hf_freq.numpy(), rtol=2e-7, atol=0)
        assert rope.attention_factor(ours) == pytest.approx(hf_factor, rel=1e-12)


@pytest.mark.parametrize("case", sorted(ROPE_TABLE_CASES))
def test_rope_tables_equal_transformers(case):
    """The config.json transformers 5 writes (rope_parameters), read by both."""
    hf = HFConfig(**SMALL, **copy.deepcopy(ROPE_TABLE_CASES[case]))
    assert_same_tables(LlamaConfig.from_dict(hf.to_dict()), hf)


@pytest.mark.parametrize("case", sorted(ROPE_TABLE_CASES))
def test_rope_tables_of_4x_config_files_equal_transformers_5(case, transformers_4):
    """The config.json transformers 4.57.6 writes for the same settings, read as transformers 5 reads it."""
    data = transformers_4("config_dict", overrides={**SMALL, **ROPE_TABLE_CASES[case]})
    assert "rope_parameters" not in data and "rope_theta" in data
    assert_same_tables(LlamaConfig.from_dict(copy.deepcopy(data)), HFConfig.from_dict(copy.deepcopy(data)))


def test_dynamic_rope_rises_only_past_max_position_embeddings():
    config = LlamaConfig(**SMALL, **ROPE_CASES["dynamic"])
    base = rope.static_inv_freq(config)
    np.testing.assert_array_equal(rope.inv_freq(config, 200), base)
    longer = rope.inv_freq(config, 600)
    assert np.all(longer[1:] < base[1:]) and longer[0] == base[0]


def test_length_dependent_rope_works_on_torch_and_traced_lengths():
    import jax
    import jax.numpy as jnp

    for case in ("dynamic", "longrope"):
        config = LlamaConfig.from_dict({**SMALL, **ROPE_CASES[case]})
        expected = rope.inv_freq(config, 600)
        np.testing.assert_allclose(rope.inv_freq(config, torch.tensor(600), torch).numpy(), expected, rtol=1e-6)
        traced = jax.jit(lambda n, c=config: rope.inv_freq(c, n, jnp))(jnp.int32(600))
        np.testing.assert_allclose(np.asarray(traced), expected, rtol=1e-6)


def test_config_json_from_transformers_4x_round_trips(tmp_path, transformers_4):
    settings = dict(**SMALL, num_key_value_heads=2, head_dim=48, tie_word_embeddings=True, attention_bias=True,
                    eos_token_id=[2, 7], **ROPE_CASES["llama3"])
    (tmp_path / "config.json").write_text(json.dumps(transformers_4("config_dict", overrides=settings)))
    hf = HFConfig.from_pretrained(tmp_path)
    ours = LlamaConfig.from_pretrained(tmp_path)
    assert (ours.num_key_value_heads, ours.head_dim, ours.num_key_value_groups) == (2, 48, 2)
    assert ours.tie_word_embeddings and ours.attention_bias and ours.eos_token_ids == (2, 7)
    assert ours.rope_scaling == ROPE_CASES["llama3"]["rope_scaling"] and ours.rope_theta == 500000.0
    out = tmp_path / "ours"
    ours.save_pretrained(out)
    back = HFConfig.from_pretrained(out)
    for name in ("hidden_size", "num_key_value_heads", "head_dim", "rope_parameters", "tie_word_embeddings",
                 "eos_token_id", "rms_norm_eps", "max_position_embeddings"):
        assert getattr(back, name) == getattr(hf, name), name


def test_config_json_from_transformers_5x_rope_parameters():
    data = {"model_type": "llama", **SMALL, "dtype": "bfloat16",
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192}}
    config = LlamaConfig.from_dict(data)
    assert config.rope_theta == 500000.0 and config.rope_type == "llama3" and config.rope_scaling["factor"] == 32.0
    assert "rope_theta" not in config.rope_scaling and config.torch_dtype == "bfloat16"
    default = LlamaConfig.from_dict({**SMALL, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert default.rope_scaling is None and default.rope_theta == 1e6


def test_legacy_type_key_and_defaults():
    config = LlamaConfig(**SMALL, rope_scaling={"type": "linear", "factor": 2.0})
    assert config.rope_type == "linear"
    plain = LlamaConfig()
    assert (plain.num_key_value_heads, plain.head_dim, plain.rms_norm_eps) == (32, 128, 1e-6)


def test_unknown_fields_survive_a_round_trip():
    config = LlamaConfig.from_dict({**SMALL, "my_custom_field": [1, 2], "pretraining_tp": 2})
    assert config.to_dict()["my_custom_field"] == [1, 2] and config.to_dict()["pretraining_tp"] == 2


@pytest.mark.parametrize("changes, field", [
    (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(hidden_size="64"), "hidden_size"),
    (dict(rope_scaling={"rope_type": "ntk-by-parts", "factor": 2.0}), "rope_type"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
    (dict(rope_scaling={"rope_type": "linear"}), "factor"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 0.5}), "factor"),
    (dict(rope_scaling={"factor": 2.0}), "rope_type"),
    (dict(hidden_act="swiglu"), "hidden_act"),
    (dict(eos_token_id=[2, "x"]), "eos_token_id"),
    (dict(tie_word_embeddings="yes"), "tie_word_embeddings"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        LlamaConfig.from_dict({**SMALL, **changes})


def test_bad_config_file_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**SMALL, "num_key_value_heads": 3}))
    with pytest.raises(ConfigError, match=str(path)):
        LlamaConfig.from_json_file(path)


@pytest.mark.parametrize("name, billions", [("llama-7b", 6.738), ("llama-2-7b", 6.738), ("llama-2-13b", 13.016),
                                            ("llama-2-70b", 68.977), ("llama-3-8b", 8.030),
                                            ("llama-3.1-405b", 405.853), ("llama-3.2-1b", 1.236),
                                            ("llama-3.2-3b", 3.213)])
def test_presets_have_the_published_parameter_counts(name, billions):
    config = LlamaConfig.from_preset(name)
    assert config.num_parameters() / 1e9 == pytest.approx(billions, abs=0.001)
    assert set(PRESETS) >= {"llama-7b", "llama-3.2-3b"}
