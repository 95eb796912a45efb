"""Perplexity of a text with a sliding window, as transformers documents it (docs: "Perplexity of
fixed-length models"): windows of max_length tokens every stride tokens, each scoring only the
tokens that the previous window did not, so every token after the first window is predicted from
at least max_length - stride tokens of context.

The total follows that recipe exactly, including its weighting: each window's mean negative
log-likelihood counts for (its new tokens - 1), the "internal label shift" correction of the
recipe; perplexity = exp(sum / count).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from llama_shared.errors import InputError
from llama_twin.backends import Backend, get_backend
from llama_twin.evaluation.scoring import score_targets


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float      # the recipe's weighted mean negative log-likelihood per token, nats
    tokens: int          # tokens in the text
    windows: int


def perplexity(model: Any, input_ids: Sequence[int], max_length: int | None = None, stride: int | None = None,
               backend: str | Backend | None = None) -> PerplexityResult:
    """Sliding-window perplexity of one token sequence under a causal-LM model of either twin.

    max_length defaults to the model's max_position_embeddings, stride to max_length (disjoint
    windows); the backend is found from the model's type unless given.
    """
    backend = _backend_of(model) if backend is None else get_backend(backend) if isinstance(backend, str) else backend
    ids = [int(i) for i in input_ids]
    max_length = max_length or model.config.max_position_embeddings
    stride = stride or max_length
    if max_length < 2:
        raise InputError(f"max_length (the window) must be at least 2 tokens, got {max_length}")
    if not 1 <= stride <= max_length:
        raise InputError(f"stride {stride} must be between 1 and the window max_length={max_length}: a stride "
                         f"larger than the window would leave tokens between windows unscored")
    if len(ids) < 2:
        raise InputError(f"the text has {len(ids)} token(s); perplexity needs at least 2")
    nll_sum, counted, windows, previous_end = 0.0, 0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        new = end - previous_end
        window = ids[begin:end]
        if len(window) >= 2:
            log_probs, _ = score_targets(backend, model, [(window[:-1], window[1:])])[0]
            scored = log_probs[-min(new, len(window) - 1):]
            nll_sum += -float(np.sum(scored)) / len(scored) * (new - 1)
            counted += new - 1
            windows += 1
        previous_end = end
        if end == len(ids):
            break
    mean = nll_sum / counted
    return PerplexityResult(math.exp(mean), mean, len(ids), windows)


def text_perplexity(model: Any, tokenizer: Any, text: str, max_length: int | None = None,
                    stride: int | None = None, backend: str | Backend | None = None) -> PerplexityResult:
    """perplexity() of a text encoded by tokenizer (with its BOS, as transformers' recipe encodes it)."""
    return perplexity(model, tokenizer.encode(text), max_length, stride, backend)


def _backend_of(model: Any) -> Backend:
    for name in ("flax", "torch"):
        backend = get_backend(name)
        if isinstance(model, backend.causal_lm):
            return backend
    raise TypeError(f"{type(model).__name__} is neither twin's causal LM (FlaxLlamaForCausalLM, LlamaForCausalLM)")
