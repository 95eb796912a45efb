"""--verify: load both sides of a conversion in their backends and compare their logits."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch

from llama_flax import FlaxLlamaForCausalLM
from llama_shared.naming import flatten_tree, unflatten_tree
from llama_torch import LlamaForCausalLM
from llama_twin.conversion.formats.flax import load_flax_params
from llama_twin.conversion.registry import open_source

VERIFY_PROMPT_LENGTH = 32


def max_logit_difference(src: str, src_format: str, dst: str, dst_format: str) -> float:
    """Max abs difference of float32 logits on a fixed prompt, each side run in its backend
    (hf and meta in the torch twin, flax in the Flax twin)."""
    src_logits = _logits(src, src_format)
    dst_logits = _logits(dst, dst_format)
    return float(np.max(np.abs(src_logits - dst_logits)))


def verify_prompt(vocab_size: int, bos_token_id: int | None) -> np.ndarray:
    """A fixed (1, 32) prompt of ids spread over the vocabulary, starting with bos."""
    ids = [(7919 * i + 3) % vocab_size for i in range(VERIFY_PROMPT_LENGTH)]
    if bos_token_id is not None and bos_token_id < vocab_size:
        ids[0] = bos_token_id
    return np.array([ids], dtype=np.int64)


def _logits(path: str, fmt: str) -> np.ndarray:
    source = open_source(path, fmt)
    config = source.config.replace(torch_dtype="float32")
    ids = verify_prompt(config.vocab_size, config.bos_token_id)
    if fmt == "flax":
        params = unflatten_tree({p: a.astype(np.float32) for p, a in flatten_tree(load_flax_params(path)).items()})
        model = FlaxLlamaForCausalLM(config, params=params, dtype=jnp.float32)
        return np.asarray(model(ids.astype(np.int32)).logits, dtype=np.float32)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    model.tie_weights()
    model.load_checkpoint(_TensorsInMemory(path, {k: a.astype(np.float32) for k, a in source.tensors()}))
    with torch.no_grad():
        return model.eval()(torch.from_numpy(ids)).logits.float().numpy()


class _TensorsInMemory:
    """The read interface of llama_shared.checkpoints.Checkpoint over a dict of arrays."""

    def __init__(self, directory: str, tensors: dict[str, np.ndarray]):
        self.directory, self._tensors = directory, tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._tensors[key].shape

    def dtype(self, key: str) -> np.dtype:
        return self._tensors[key].dtype

    def read(self, key: str) -> np.ndarray:
        return self._tensors[key]

    get = read
