"""The real Llama shapes, Llama 1 7B to Llama 3.2 3B, as config.json dicts."""

from __future__ import annotations

from typing import Any

_LLAMA1 = {"vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}
_LLAMA2 = {"vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
_LLAMA3 = {"vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
           "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001}
_LLAMA31 = {**_LLAMA3, "max_position_embeddings": 131072,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
_LLAMA32 = {**_LLAMA31, "tie_word_embeddings": True,
            "rope_scaling": {**_LLAMA31["rope_scaling"], "factor": 32.0}}


def _shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int | None = None,
           **rest: Any) -> dict[str, Any]:
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads or heads, **rest}


PRESETS: dict[str, dict[str, Any]] = {
    "llama-7b": {**_LLAMA1, **_shape(4096, 11008, 32, 32)},
    "llama-13b": {**_LLAMA1, **_shape(5120, 13824, 40, 40)},
    "llama-30b": {**_LLAMA1, **_shape(6656, 17920, 60, 52)},
    "llama-65b": {**_LLAMA1, **_shape(8192, 22016, 80, 64)},
    "llama-2-7b": {**_LLAMA2, **_shape(4096, 11008, 32, 32)},
    "llama-2-13b": {**_LLAMA2, **_shape(5120, 13824, 40, 40)},
    "llama-2-70b": {**_LLAMA2, **_shape(8192, 28672, 80, 64, 8)},
    "llama-3-8b": {**_LLAMA3, **_shape(4096, 14336, 32, 32, 8)},
    "llama-3-70b": {**_LLAMA3, **_shape(8192, 28672, 80, 64, 8)},
    "llama-3.1-8b": {**_LLAMA31, **_shape(4096, 14336, 32, 32, 8)},
    "llama-3.1-70b": {**_LLAMA31, **_shape(8192, 28672, 80, 64, 8)},
    "llama-3.1-405b": {**_LLAMA31, **_shape(16384, 53248, 126, 128, 8)},
    "llama-3.2-1b": {**_LLAMA32, **_shape(2048, 8192, 16, 32, 8, head_dim=64)},
    "llama-3.2-3b": {**_LLAMA32, **_shape(3072, 8192, 28, 24, 8, head_dim=128)},
}
