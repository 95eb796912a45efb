"""The two backends as one interface, for the code that runs either twin: its causal-LM class, how
token ids go in, how results come out as numpy, and the context a forward pass runs in. A backend
imports its twin when first asked for, so a command that runs one twin never waits for the other's
framework to import."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def _flax_backend() -> Backend:
    import jax
    import jax.numpy as jnp

    from llama_flax import FlaxLlamaForCausalLM

    def to_numpy(array: Any) -> np.ndarray:
        array = np.asarray(array)
        return array.astype(np.float32) if array.dtype.kind == "V" or array.dtype.name == "bfloat16" else array

    @jax.jit
    def target_scores(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
        """log p(targets[b, t]) under float32 logits[b, t], and whether each target is the argmax."""
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0], jnp.argmax(logits, -1) == targets

    return Backend("flax", FlaxLlamaForCausalLM, from_numpy=lambda a: a, to_numpy=to_numpy,
                   inference=contextlib.nullcontext, target_scores=target_scores)


def _torch_backend() -> Backend:
    import torch

    from llama_torch import LlamaForCausalLM

    def to_numpy(tensor: torch.Tensor) -> np.ndarray:
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()

    def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(targets[b, t]) under float32 logits[b, t], and whether each target is the argmax."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        return log_probs.gather(-1, targets[..., None].long())[..., 0], logits.argmax(-1) == targets

    return Backend("torch", LlamaForCausalLM, from_numpy=torch.from_numpy, to_numpy=to_numpy,
                   inference=torch.no_grad, target_scores=target_scores)


_BUILDERS = {"flax": _flax_backend, "torch": _torch_backend}


@functools.cache
def get_backend(name: str) -> Backend:
    """The backend called "flax" or "torch", its twin imported on first use; ValueError naming both otherwise."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    return _BUILDERS[name]()
