"""GenerationConfig: bad values and unknown fields are GenerationErrors (ValueErrors) naming the field,
a generation_config.json is read with its nulls and a bad one names the file."""

from __future__ import annotations

import pytest

from llama_shared.errors import GenerationError
from llama_shared.generation import GenerationConfig


def test_generation_errors_are_value_errors():
    with pytest.raises(ValueError, match="top_p must be in \\(0, 1\\]"):
        GenerationConfig(top_p=0)


def test_unknown_generation_field():
    with pytest.raises(GenerationError, match="top_q"):
        GenerationConfig().update(top_q=0.5)


def test_a_bad_generation_config_file_names_the_file(tmp_path):
    (tmp_path / "generation_config.json").write_text('{"temperature": "hot"}')
    with pytest.raises(GenerationError, match="generation_config.json.*temperature"):
        GenerationConfig.from_pretrained(tmp_path)


def test_nulls_in_a_generation_config_file(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        '{"temperature": null, "top_p": null, "top_k": null, "do_sample": true, "eos_token_id": [3, 4]}')
    config = GenerationConfig.from_pretrained(tmp_path)
    assert (config.temperature, config.top_p, config.top_k, config.eos_token_id) == (1.0, 1.0, None, [3, 4])
    assert config.processors() == ("min_new_tokens",)


def test_a_negative_pad_id_means_no_pad_token(tmp_path):
    """Llama 1 folders converted from Meta's weights carry pad_token_id -1 (Meta's "no pad"): they
    load, and generation pads finished rows with eos as for a model without a pad token."""
    from llama_shared import LlamaConfig

    (tmp_path / "config.json").write_text('{"hidden_size": 64, "num_attention_heads": 4, "pad_token_id": -1, '
                                          '"bos_token_id": 1, "eos_token_id": 2}')
    config = LlamaConfig.from_pretrained(tmp_path)
    assert config.pad_token_id == -1
    assert GenerationConfig.for_model(tmp_path, config).pad_token_id is None
    (tmp_path / "generation_config.json").write_text('{"pad_token_id": -1, "eos_token_id": 2}')
    assert GenerationConfig.for_model(tmp_path, config).pad_token_id is None
    with pytest.raises(GenerationError, match="pad_token_id must be an integer >= 0"):
        GenerationConfig(pad_token_id=-1)
