"""Shared fixtures: tiny random transformers checkpoints saved once per session and reused."""

from __future__ import annotations

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_hf_config(**overrides):
    """A transformers LlamaConfig for a tiny model (GQA 4/2 by default); overrides change any field."""
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY, **overrides})


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """factory(**config_overrides, model_class="LlamaForCausalLM", dtype=None) -> folder of a saved
    random transformers model; the same arguments return the same folder (built once)."""
    import torch
    import transformers

    made: dict[str, str] = {}

    def build(model_class: str = "LlamaForCausalLM", seed: int = 0, dtype=None, **overrides) -> str:
        key = json.dumps([model_class, seed, str(dtype), overrides], sort_keys=True, default=str)
        if key not in made:
            torch.manual_seed(seed)
            model = getattr(transformers, model_class)(tiny_hf_config(**overrides)).eval()
            if dtype is not None:
                model = model.to(dtype)
            folder = tmp_path_factory.mktemp(model_class)
            model.save_pretrained(folder)
            made[key] = str(folder)
        return made[key]

    return build
