"""The two backends as one interface, for the code that runs either twin: its causal-LM class, how
token ids go in, how results come out as numpy, and the context a forward pass runs in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def _torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _flax_to_numpy(array: Any) -> np.ndarray:
    array = np.asarray(array)
    return array.astype(np.float32) if array.dtype.kind == "V" or array.dtype.name == "bfloat16" else array


BACKENDS = {
    "flax": Backend("flax", FlaxLlamaForCausalLM, from_numpy=lambda a: a, to_numpy=_flax_to_numpy,
                    inference=contextlib.nullcontext),
    "torch": Backend("torch", LlamaForCausalLM, from_numpy=torch.from_numpy, to_numpy=_torch_to_numpy,
                     inference=torch.no_grad),
}


def get_backend(name: str) -> Backend:
    """The backend called "flax" or "torch"; ValueError naming both otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    return BACKENDS[name]
