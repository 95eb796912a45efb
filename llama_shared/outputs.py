"""Model outputs, the same dataclasses for both backends (fields named as in transformers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BaseModelOutput:
    """LlamaModel: the final normed hidden states; hidden_states holds the embeddings, each layer's
    output and, last, the normed output (transformers' convention), when asked for."""

    last_hidden_state: Any
    hidden_states: tuple[Any, ...] | None = None
    past_key_values: Any = None


@dataclass
class CausalLMOutput:
    logits: Any
    loss: Any = None
    hidden_states: tuple[Any, ...] | None = None
    past_key_values: Any = None


@dataclass
class SequenceClassifierOutput:
    logits: Any
    loss: Any = None
    hidden_states: tuple[Any, ...] | None = None


@dataclass
class TokenClassifierOutput:
    logits: Any
    loss: Any = None
    hidden_states: tuple[Any, ...] | None = None


@dataclass
class QuestionAnsweringOutput:
    start_logits: Any
    end_logits: Any
    loss: Any = None
    hidden_states: tuple[Any, ...] | None = None
