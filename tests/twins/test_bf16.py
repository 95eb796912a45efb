"""bfloat16: both twins against transformers in bfloat16 on a 2-layer model, next-token KL per position."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from llama_flax import FlaxLlamaForCausalLM
from llama_torch import LlamaForCausalLM

MAX_KL = 0.015  # per position, the bar MaxText's logit checker uses for converted checkpoints


def kl_per_position(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) of the softmax distributions, computed in float64."""
    p = p_logits.astype(np.float64) - np.logaddexp.reduce(p_logits.astype(np.float64), axis=-1, keepdims=True)
    q = q_logits.astype(np.float64) - np.logaddexp.reduce(q_logits.astype(np.float64), axis=-1, keepdims=True)
    return np.sum(np.exp(p) * (p - q), axis=-1)


def test_bf16_next_token_distributions_match_transformers(hf_checkpoint):
    folder = hf_checkpoint(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2,
                           vocab_size=1000)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 1000, size=(2, 200))
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    ours = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    flax = FlaxLlamaForCausalLM.from_pretrained(folder, dtype=jnp.bfloat16)
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).logits.float().numpy()
        got_t = ours(torch.tensor(ids)).logits.float().numpy()
        exact = LlamaForCausalLM.from_pretrained(folder)(torch.tensor(ids)).logits.numpy()
    got_f = np.asarray(flax(ids).logits.astype(jnp.float32))
    assert flax.params["model"]["norm"]["weight"].dtype == jnp.bfloat16
    kl_t, kl_f = kl_per_position(expected, got_t), kl_per_position(expected, got_f)
    assert kl_t.max() <= MAX_KL and kl_f.max() <= MAX_KL, (kl_t.max(), kl_f.max())
    # bf16 really ran: the float32 model differs from it by far more than float32 rounding.
    assert np.abs(exact - expected).max() > 1e-2
