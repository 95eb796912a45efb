"""pipeline("text-generation", model=..., backend="flax"|"torch"): prompts in, text out, as transformers' pipeline.

A string gives [{"generated_text": ...}]; a list of strings gives one such list per prompt; a chat
(a list of {"role", "content"} messages) goes through the tokenizer's chat template and, with
return_full_text, comes back as the conversation with the assistant's reply appended.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from llama_shared.checkpoints import resolve_model_dir
from llama_shared.generation import GenerationConfig
from llama_shared.tokenizers import AutoTokenizer
from llama_twin.backends import Backend, get_backend

PIPELINE_MAX_NEW_TOKENS = 256   # transformers' text-generation pipeline default


def pipeline(task: str, model: Any, backend: str = "flax", tokenizer: Any = None, dtype: Any = None,
             **generate_defaults: Any) -> "TextGenerationPipeline":
    """Build a text-generation pipeline from a model folder or hub id (or a loaded model plus its tokenizer).

    dtype is passed to from_pretrained ("float32", "bfloat16", "auto", ...); generate_defaults
    (max_new_tokens, do_sample, temperature, ...) apply to every call unless the call overrides them.
    """
    if task != "text-generation":
        raise ValueError(f"unsupported task {task!r}; llama-twin's pipeline does 'text-generation'")
    selected = get_backend(backend)
    if isinstance(model, (str, os.PathLike)):
        directory = resolve_model_dir(model)
        model = selected.causal_lm.from_pretrained(directory, dtype=dtype)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(directory)
    elif tokenizer is None:
        raise ValueError("pass tokenizer= with a loaded model (a folder or hub id brings its own)")
    return TextGenerationPipeline(model, tokenizer, selected, generate_defaults)


class TextGenerationPipeline:
    """Tokenize, left-pad, generate and decode; see pipeline()."""

    def __init__(self, model: Any, tokenizer: Any, backend: Backend, generate_defaults: dict[str, Any]):
        self.model, self.tokenizer, self.backend = model, tokenizer, backend
        self.generate_defaults = generate_defaults

    def __call__(self, inputs: str | list[str] | list[dict[str, str]] | list[list[dict[str, str]]],
                 return_full_text: bool = True, **generate_kwargs: Any) -> list:
        """Generate for one prompt or chat (a list of results) or for several (a list of such lists)."""
        single = isinstance(inputs, str) or _is_chat(inputs)
        batch = [inputs] if single else list(inputs)
        rows = [self._encode(item) for item in batch]
        kwargs = {**self.generate_defaults, **generate_kwargs}
        config: GenerationConfig = self.model.generation_defaults()
        if kwargs.get("max_new_tokens") is None and kwargs.get("max_length") is None and config.max_new_tokens is None:
            kwargs["max_new_tokens"] = PIPELINE_MAX_NEW_TOKENS
        pad = kwargs.get("pad_token_id", config.pad_token_id)
        if pad is None:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = _left_pad(rows, pad)
        b = self.backend
        output = b.to_numpy(self.model.generate(b.from_numpy(ids), b.from_numpy(mask), **kwargs))
        results = [[self._result(item, row, output[i, ids.shape[1]:], return_full_text)]
                   for i, (item, row) in enumerate(zip(batch, rows))]
        return results[0] if single else results

    def _encode(self, item: str | list[dict[str, str]]) -> list[int]:
        if _is_chat(item):
            return list(self.tokenizer.apply_chat_template(item, add_generation_prompt=True))
        if not isinstance(item, str):
            raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(item).__name__}")
        return list(self.tokenizer.encode(item))

    def _result(self, item: Any, prompt_ids: list[int], new_ids: np.ndarray, return_full_text: bool) -> dict:
        """transformers' text: decode prompt + reply, cut at the decoded prompt's length."""
        sequence = list(prompt_ids) + [int(t) for t in new_ids]
        text = self.tokenizer.decode(sequence, skip_special_tokens=True)
        reply = text[len(self.tokenizer.decode(prompt_ids, skip_special_tokens=True)):]
        if _is_chat(item):
            return {"generated_text": [*item, {"role": "assistant", "content": reply}] if return_full_text else reply}
        return {"generated_text": item + reply if return_full_text else reply}


def _is_chat(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) > 0 and all(isinstance(m, dict) for m in item)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids, left-padded to the longest, and their attention mask."""
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return ids, mask
