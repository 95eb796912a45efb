"""Log-probabilities of given next tokens under either twin, in padded batches: the one forward
pass that perplexity and the lm-evaluation-harness models share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llama_shared import rope
from llama_shared.generation import bucket_length
from llama_twin.backends import Backend


def score_targets(backend: Backend, model: Any, rows: Sequence[tuple[Sequence[int], Sequence[int]]],
                  pad_token_id: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each (inputs, targets) row of equal lengths: log p(targets[t] | inputs[:t + 1]) as float64
    and whether targets[t] is the argmax, one forward pass for all rows.

    Rows are right-padded to a shared length, bucketed so that the Flax twin compiles once per
    bucket (a causal model's scores at a position never see later positions, so padding needs no
    mask); not bucketed where RoPE depends on the longest position (dynamic scaling).
    """
    for inputs, targets in rows:
        if len(inputs) != len(targets) or not inputs:
            raise ValueError(f"a scored row needs as many targets as inputs (at least one); got "
                             f"{len(inputs)} inputs and {len(targets)} targets")
    width = max(len(inputs) for inputs, _ in rows)
    if not rope.is_length_dependent(model.config):
        width = bucket_length(width)
    ids = np.full((len(rows), width), pad_token_id, np.int64)
    targets = np.full((len(rows), width), pad_token_id, np.int64)
    for row, (row_inputs, row_targets) in enumerate(rows):
        ids[row, :len(row_inputs)], targets[row, :len(row_targets)] = row_inputs, row_targets
    with backend.inference():
        logits = model(backend.from_numpy(ids)).logits
        log_probs, greedy = backend.target_scores(logits, backend.from_numpy(targets))
        log_probs, greedy = backend.to_numpy(log_probs).astype(np.float64), backend.to_numpy(greedy)
    return [(log_probs[row, :len(inputs)], greedy[row, :len(inputs)]) for row, (inputs, _) in enumerate(rows)]
