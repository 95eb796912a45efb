"""Shared fixtures: tiny random transformers checkpoints saved once per session and reused, and the
config cases the parity matrix runs."""

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


def randomize_(model) -> None:
    """Give every parameter random values, norms and biases included (transformers' init leaves norms
    at 1 and biases at 0, where a wrong transpose or a missing bias would go unseen). The scale makes
    logits of order one, so a 1e-4 tolerance is tight."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.copy_(0.08 * torch.randn_like(param))


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
            randomize_(model)
            if dtype is not None:
                model = model.to(dtype)
            folder = tmp_path_factory.mktemp(model_class)
            model.save_pretrained(folder)
            made[key] = str(folder)
        return made[key]

    return build


ROPE_CASES = {
    "linear": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=256),
    "yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
    "longrope": dict(rope_scaling={"rope_type": "longrope", "short_factor": [1.0 + i / 8 for i in range(8)],
                                   "long_factor": [2.0 + i / 2 for i in range(8)]},
                     max_position_embeddings=1024, original_max_position_embeddings=256),
    "llama3": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
                   rope_theta=500000.0),
}

# Every config feature of the parity matrix (tiny default: GQA 4 heads / 2 kv heads, 2 layers).
MODEL_CASES = {
    "mha": dict(num_key_value_heads=4),
    "gqa": dict(),
    "mqa": dict(num_key_value_heads=1),
    "head_dim": dict(head_dim=32),
    "attention_bias": dict(attention_bias=True),
    "mlp_bias": dict(mlp_bias=True),
    "tied": dict(tie_word_embeddings=True),
    "gelu": dict(hidden_act="gelu"),
    **{f"rope_{name}": case for name, case in ROPE_CASES.items()},
}
