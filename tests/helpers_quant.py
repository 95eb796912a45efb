"""A small random Llama whose weights look like a trained model's, for quantization-error tests.

Initialisation-style weights (Gaussian, std 0.02) are the easy case for quantization and give
near-uniform next-token distributions, so a KL measured on them says little. Here every linear
weight has heavy tails (Student-t, 5 degrees of freedom: excess kurtosis 6) and a few loud input
channels (per-column scales drawn log-normally, sigma 0.5), the two features that make real Llama
weights hard to quantize. Weights are scaled by 1/sqrt(fan_in) so activations stay O(1), the
layers' output projections by a further 1/sqrt(2 * layers) so each layer nudges the residual
stream rather than replacing it (as in trained models, and GPT-2's initialisation), and the head so
the float model's next-token distributions are peaked (entropy well below log(vocab)). Hidden and intermediate sizes are multiples of 128 so every int4 group size applies,
and the embedding is about 2% of the weights, as in Llama-2-7B.
"""

from __future__ import annotations

import numpy as np

from llama_shared.checkpoints import save_tensors
from llama_shared.config import LlamaConfig

REALISTIC = dict(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def heavy_tailed(rng: np.random.Generator, out_features: int, in_features: int, gain: float = 1.0) -> np.ndarray:
    """Student-t(5) entries with log-normal per-input-column scales, std about gain / sqrt(in_features)."""
    t = rng.standard_t(5, size=(out_features, in_features)) / np.sqrt(5 / 3)
    columns = rng.lognormal(0.0, 0.5, size=in_features)
    columns /= np.sqrt(np.mean(columns**2))
    return (t * columns * gain / np.sqrt(in_features)).astype(np.float32)


def save_realistic_model(directory: str, seed: int = 0) -> str:
    """Write config.json and model.safetensors of the model described above; return the folder."""
    config = LlamaConfig(**REALISTIC)
    rng = np.random.default_rng(seed)
    h, inter, d = config.hidden_size, config.intermediate_size, config.head_dim
    tensors = {"model.embed_tokens.weight": rng.standard_normal((config.vocab_size, h)).astype(np.float32)}
    shapes = {"self_attn.q_proj": (config.num_attention_heads * d, h),
              "self_attn.k_proj": (config.num_key_value_heads * d, h),
              "self_attn.v_proj": (config.num_key_value_heads * d, h),
              "self_attn.o_proj": (h, config.num_attention_heads * d),
              "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h), "mlp.down_proj": (h, inter)}
    residual_gain = 1 / np.sqrt(2 * config.num_hidden_layers)
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for module, (out_features, in_features) in shapes.items():
            gain = residual_gain if module in ("self_attn.o_proj", "mlp.down_proj") else 1.0
            tensors[f"{prefix}{module}.weight"] = heavy_tailed(rng, out_features, in_features, gain)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"{prefix}{norm}.weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
    tensors["model.norm.weight"] = np.ones(h, np.float32)
    tensors["lm_head.weight"] = heavy_tailed(rng, config.vocab_size, h, gain=4.0)
    config.save_pretrained(directory)
    save_tensors(directory, tensors)
    return directory


def mean_kl_per_token(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over tokens of KL(reference || other) between the next-token distributions, in nats."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_p, log_q = log_softmax(reference_logits), log_softmax(logits)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))


def mean_entropy(logits: np.ndarray) -> float:
    """Mean next-token entropy in nats."""
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    log_p = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return float(np.mean(-np.sum(np.exp(log_p) * log_p, axis=-1)))
