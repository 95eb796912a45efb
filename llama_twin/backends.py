"""The two backends as one interface, for the code that runs either twin: its causal-LM class, how
token ids go in, how results come out as numpy, and the context a forward pass runs in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from llama_flax import FlaxLlamaForCausalLM
from llama_torch import LlamaForCausalLM

BACKEND_NAMES = ("flax", "torch")


@dataclass(frozen=True)
class Backend:
    """One twin seen from the application layer."""

    name: str
    causal_lm: type
    from_numpy: Callable[[np.ndarray], Any]  # an int or float array into the model's array type
    to_numpy: Callable[[Any], np.ndarray]  # a model's output array back to the host, as is
    inference: Callable[[], contextlib.AbstractContextManager]  # no autograd bookkeeping
    target_scores: Callable[[Any, Any], tuple[Any, Any]]  # (logits, targets) -> (float32 log p, is argmax)


def _torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _flax_to_numpy(array: Any) -> np.ndarray:
    array = np.asarray(array)
    return array.astype(np.float32) if array.dtype.kind == "V" or array.dtype.name == "bfloat16" else array


def _torch_target_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(targets[b, t]) under float32 logits[b, t], and whether each target is the argmax."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, targets[..., None].long())[..., 0], logits.argmax(-1) == targets


@jax.jit
def _flax_target_scores(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log p(targets[b, t]) under float32 logits[b, t], and whether each target is the argmax."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0], jnp.argmax(logits, -1) == targets


BACKENDS = {
    "flax": Backend("flax", FlaxLlamaForCausalLM, from_numpy=lambda a: a, to_numpy=_flax_to_numpy,
                    inference=contextlib.nullcontext, target_scores=_flax_target_scores),
    "torch": Backend("torch", LlamaForCausalLM, from_numpy=torch.from_numpy, to_numpy=_torch_to_numpy,
                     inference=torch.no_grad, target_scores=_torch_target_scores),
}


def get_backend(name: str) -> Backend:
    """The backend called "flax" or "torch"; ValueError naming both otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    return BACKENDS[name]
