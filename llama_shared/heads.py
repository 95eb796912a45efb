"""Framework-free rules of the task heads: loss kinds, dropout defaults, pooling conventions."""

from __future__ import annotations

from typing import Any

from llama_shared.config import LlamaConfig
from llama_shared.errors import ConfigError

IGNORE_INDEX = -100
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def sequence_problem_type(config: LlamaConfig, integer_labels: bool) -> str:
    """transformers' rule: one label is regression; integer labels are single-label; else multi-label."""
    if config.problem_type is not None:
        if config.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"config field 'problem_type' must be one of {PROBLEM_TYPES}, "
                              f"got {config.problem_type!r}")
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if integer_labels else "multi_label_classification"


def token_classifier_dropout(config: LlamaConfig) -> float:
    """classifier_dropout, else hidden_dropout, else 0.1 (transformers' GenericForTokenClassification)."""
    if config.classifier_dropout is not None:
        return config.classifier_dropout
    return config.extra.get("hidden_dropout") or 0.1


def require_pad_for_batch(config: LlamaConfig, batch_size: int) -> None:
    """Sequence classification pools at the last non-pad token, so a batch needs pad_token_id."""
    if config.pad_token_id is None and batch_size != 1:
        raise ConfigError("config field 'pad_token_id' is null: sequence classification cannot find the last "
                          "token of each row in a batch larger than 1")


def packed_labels(labels: Any, segment_ids: Any, xp: Any) -> Any:
    """labels with IGNORE_INDEX at padding (segment 0) and at each document's first token, so the
    causal-LM loss never predicts one document's first token from the end of the one before it."""
    seq = segment_ids.shape[-1]
    previous = segment_ids[:, [0, *range(seq - 1)]]
    return xp.where((segment_ids == 0) | (segment_ids != previous), IGNORE_INDEX, labels)
