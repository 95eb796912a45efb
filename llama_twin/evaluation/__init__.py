"""Evaluation above both twins: perplexity of a text with a sliding window (transformers' recipe),
and EleutherAI lm-evaluation-harness models (llama_twin.evaluation.harness, imported on demand
since lm-eval is an optional dependency)."""

from llama_twin.evaluation.perplexity import PerplexityResult, perplexity, text_perplexity
from llama_twin.evaluation.scoring import score_targets

__all__ = ["PerplexityResult", "perplexity", "text_perplexity", "score_targets"]
