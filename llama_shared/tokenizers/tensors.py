"""The one place the core meets a framework: turning a tokenizer's int64 array into the tensor type
``return_tensors`` asks for ("np", "jax" or "pt"). The framework is imported only when asked for, so
the core still runs with neither installed (the import-direction test allows this module alone)."""

from __future__ import annotations

from typing import Any

import numpy as np

RETURN_TENSORS = ("np", "jax", "pt")


def as_return_tensors(array: np.ndarray, return_tensors: str) -> Any:
    """array as a numpy array ("np"), a jax.Array ("jax") or a torch.Tensor ("pt")."""
    if return_tensors == "jax":
        import jax.numpy as jnp

        return jnp.asarray(array)
    if return_tensors == "pt":
        import torch

        return torch.from_numpy(array)
    return array
