"""Sampling filters, checked statistically: 10k draws from a fixed distribution after each filter
match the filtered distribution (chi-square), in both backends; seeds make sampling reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from llama_shared.config import LlamaConfig
from llama_shared.generation import GenerationConfig, plan_generation

LOGITS = np.array([2.0, 1.6, 1.2, 0.9, 0.5, 0.1, -0.4, -1.0, -1.7, -2.5], np.float32)
SEEN = np.array([1, 4, 7])           # tokens already in the sequence, for the repetition penalty
DRAWS = 10_000
CASES = {
    "temperature": dict(temperature=0.6),
    "top_k": dict(top_k=4),
    "top_p": dict(top_p=0.7),
    "min_p": dict(min_p=0.2),
    "repetition_penalty": dict(repetition_penalty=1.8),
    "all_in_order": dict(repetition_penalty=1.3, temperature=1.7, top_k=7, top_p=0.85, min_p=0.12),
}


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x[np.isfinite(x)].max())
    return e / e.sum()


def expected_distribution(repetition_penalty=1.0, temperature=1.0, top_k=0, top_p=1.0, min_p=None) -> np.ndarray:
    """The filters written out from their definitions, applied in transformers' order."""
    scores = LOGITS.astype(np.float64).copy()
    seen = scores[SEEN]
    scores[SEEN] = np.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
    scores = scores / temperature
    if top_k:
        scores[scores < np.sort(scores)[::-1][top_k - 1]] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-scores)
        before = np.cumsum(softmax(scores)[order]) - softmax(scores)[order]   # mass strictly more likely
        scores[order[before >= top_p]] = -np.inf
    if min_p is not None:
        probs = softmax(scores)
        scores[probs < min_p * probs.max()] = -np.inf
    return softmax(scores)


def plan_for(**sampling):
    config = GenerationConfig(**{"do_sample": True, "top_k": 0, "eos_token_id": [], "max_new_tokens": 1, **sampling})
    model_config = LlamaConfig(vocab_size=len(LOGITS), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                               num_attention_heads=1)
    return plan_generation(np.zeros((DRAWS, 1), np.int64), None, config, model_config, cache_length=2)


def draw_torch(plan) -> np.ndarray:
    import torch

    from llama_torch.generation import process_logits, select_tokens

    scores = torch.from_numpy(np.tile(LOGITS, (DRAWS, 1)))
    seen = torch.zeros_like(scores, dtype=torch.bool)
    seen[:, SEEN] = True
    scores = process_logits(scores, plan, seen, torch.zeros(0, dtype=torch.long), 0)
    return select_tokens(scores, True, torch.Generator().manual_seed(0)).numpy()


def draw_flax(plan) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    from llama_flax.generation import DecodeSettings, process_logits, sampling_values, select_tokens

    settings = DecodeSettings(plan.processors, True, int(plan.config.top_k or 0), plan.cache_length)
    seen = jnp.zeros((DRAWS, len(LOGITS)), bool).at[:, SEEN].set(True)

    @jax.jit
    def draw(scores, values, key):
        return select_tokens(process_logits(scores, settings, values, seen, jnp.int32(0)), True, key)

    return np.asarray(draw(jnp.tile(LOGITS, (DRAWS, 1)), sampling_values(plan), jax.random.key(0)))


@pytest.mark.parametrize("backend", ["torch", "flax"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_draws_follow_the_filtered_distribution(case, backend):
    sampling = CASES[case]
    expected = expected_distribution(**sampling)
    draws = (draw_torch if backend == "torch" else draw_flax)(plan_for(**sampling))
    counts = np.bincount(draws, minlength=len(LOGITS))
    kept = expected > 0
    assert kept.sum() < len(LOGITS) or case in ("temperature", "repetition_penalty")
    assert counts[~kept].sum() == 0, f"filtered-out tokens drawn: {counts}"
    result = chisquare(counts[kept], expected[kept] * DRAWS)
    assert result.pvalue > 1e-3, f"{case}/{backend}: counts {counts}, expected {np.round(expected * DRAWS)}"


def test_expected_distribution_differs_from_unfiltered():
    """The reference filters change the distribution, so the chi-square tests can fail."""
    plain = softmax(LOGITS.astype(np.float64))
    for case, sampling in CASES.items():
        assert np.abs(expected_distribution(**sampling) - plain).max() > 0.02, case


def test_seed_makes_sampling_reproducible(twins):
    torch_model, flax_model = twins
    ids = np.array([[1, 17, 33, 45, 9]])
    sampling = dict(do_sample=True, temperature=1.5, top_k=0, max_new_tokens=24, eos_token_id=[])
    for model, prompt in ((torch_model, __import__("torch").from_numpy(ids)), (flax_model, ids)):
        first = np.asarray(model.generate(prompt, seed=7, **sampling))
        again = np.asarray(model.generate(prompt, seed=7, **sampling))
        other = np.asarray(model.generate(prompt, seed=8, **sampling))
        np.testing.assert_array_equal(first, again)
        assert (first != other).any()
