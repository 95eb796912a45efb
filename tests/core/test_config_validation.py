"""config.json validation against hostile values (issue 18): NaN and infinity, numbers out of range,
values of the wrong JSON type, files that are not a JSON object. Each gets a ConfigError naming the
file and field; a fuzz test checks that whatever LlamaConfig accepts can be used (RoPE tables,
parameter count, a round trip through config.json) and that nothing else is ever raised."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_shared import rope
from llama_shared.config import LlamaConfig
from llama_shared.errors import ConfigError
from tests.cases import ROPE_CASES

SMALL = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
NAN, INF = float("nan"), float("inf")


def llama3(**changes) -> dict:
    return dict(rope_scaling={**ROPE_CASES["llama3"]["rope_scaling"], **changes})


BAD_VALUES = {
    "NaN rms_norm_eps": (dict(rms_norm_eps=NAN), "rms_norm_eps"),
    "infinite rms_norm_eps": (dict(rms_norm_eps=INF), "rms_norm_eps"),
    "NaN rope_theta": (dict(rope_theta=NAN), "rope_theta"),
    "infinite rope_theta": (dict(rope_theta=INF), "rope_theta"),
    "rope_theta of one": (dict(rope_theta=1.0), "rope_theta"),
    "NaN rope factor": (dict(rope_scaling={"rope_type": "linear", "factor": NAN}), "rope_scaling.factor"),
    "infinite rope factor": (dict(rope_scaling={"rope_type": "linear", "factor": INF}), "rope_scaling.factor"),
    "NaN llama3 low_freq_factor": (llama3(low_freq_factor=NAN), "low_freq_factor"),
    "llama3 factors as strings": (llama3(low_freq_factor="1", high_freq_factor="4"), "low_freq_factor"),
    "zero llama3 original length": (llama3(original_max_position_embeddings=0), "original_max_position_embeddings"),
    "NaN in longrope factors": (dict(rope_scaling={**ROPE_CASES["longrope"]["rope_scaling"],
                                                   "short_factor": [NAN] * 8}), "short_factor"),
    "yarn beta zero": (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 0}), "beta_fast"),
    "dynamic with head_dim 2": (dict(hidden_size=8, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
                                "head_dim"),
    "rope_type a list": (dict(rope_scaling={"rope_type": ["linear"], "factor": 2.0}), "rope_type"),
    "NaN initializer_range": (dict(initializer_range=NAN), "initializer_range"),
    "attention_dropout above one": (dict(attention_dropout=1.5), "attention_dropout"),
    "huge vocabulary": (dict(vocab_size=10**30), "vocab_size"),
    "float hidden_size": (dict(hidden_size=64.0), "hidden_size"),
    "boolean layers": (dict(num_hidden_layers=True), "num_hidden_layers"),
    "eos a float": (dict(eos_token_id=2.0), "eos_token_id"),
    "eos an object": (dict(eos_token_id={"a": 2}), "eos_token_id"),
    "use_cache a string": (dict(use_cache="yes"), "use_cache"),
    "id2label a list": (dict(id2label=["a", "b"]), "id2label"),
    "zero num_labels": (dict(num_labels=0), "num_labels"),
    "torch_dtype a number": (dict(torch_dtype=16), "torch_dtype"),
    "original_max_position_embeddings negative": (dict(original_max_position_embeddings=-1),
                                                  "original_max_position_embeddings"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_hostile_value_is_a_config_error_naming_the_field(tmp_path, case):
    changes, field = BAD_VALUES[case]
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**SMALL, **changes}))  # NaN and Infinity as Python's json writes them
    with pytest.raises(ConfigError, match=field) as error:
        LlamaConfig.from_json_file(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "a JSON object of fields, got a list"),
    ("42", "a JSON object of fields, got a int"),
    ("null", "a JSON object of fields, got a NoneType"),
    ('{"hidden_size": 64', "not valid JSON"),
    ("[" * 100_000, "not valid JSON"),
], ids=["list", "number", "null", "cut", "nested too deep"])
def test_config_file_that_is_not_a_json_object(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        LlamaConfig.from_json_file(path)


def test_not_utf8_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"hidden_size": "\xff"}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        LlamaConfig.from_json_file(path)


# ------------------------------------------------------------------------------------------------
# Fuzz

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.integers(-2**80, 2**80),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                 st.lists(st.integers(-3, 3), max_size=4), st.builds(dict))
FIELDS = sorted({*SMALL, "head_dim", "rms_norm_eps", "rope_theta", "hidden_act", "tie_word_embeddings",
                 "attention_bias", "mlp_bias", "eos_token_id", "bos_token_id", "pad_token_id", "initializer_range",
                 "attention_dropout", "num_labels", "id2label", "rope_scaling", "rope_parameters", "use_cache",
                 "pretraining_tp", "original_max_position_embeddings", "torch_dtype", "dtype"})
SCALING_KEYS = ("rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings", "short_factor", "long_factor", "attention_factor", "beta_fast",
                "beta_slow", "mscale", "mscale_all_dim", "truncate", "rope_theta")


@st.composite
def configs(draw):
    """A valid config (any rope_type), then a few fields or rope_scaling keys replaced by junk."""
    data = {**SMALL, **draw(st.sampled_from([{}, *ROPE_CASES.values()]))}
    data = json.loads(json.dumps(data))
    for _ in range(draw(st.integers(0, 3))):
        if isinstance(data.get("rope_scaling"), dict) and draw(st.booleans()):
            data["rope_scaling"][draw(st.sampled_from(SCALING_KEYS))] = draw(JUNK)
        else:
            data[draw(st.sampled_from(FIELDS))] = draw(JUNK)
    return data


@settings(max_examples=400)
@given(data=configs())
def test_fuzz_config_is_a_config_error_or_a_usable_config(data):
    try:
        config = LlamaConfig.from_dict(data)
    except ConfigError:
        return
    frequencies = rope.inv_freq(config, 2 * config.max_position_embeddings)
    assert frequencies.shape == (config.head_dim // 2,) and np.all(np.isfinite(frequencies))
    assert math.isfinite(rope.attention_factor(config)) and rope.attention_factor(config) > 0
    assert config.num_parameters() > 0
    written = json.dumps(config.to_dict(), sort_keys=True)
    assert json.dumps(LlamaConfig.from_dict(json.loads(written)).to_dict(), sort_keys=True) == written
