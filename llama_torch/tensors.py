"""Tensors between numpy and torch on the host: bfloat16 as ml_dtypes.bfloat16, memory shared
where possible (checkpoint reading, saving and quantization all pass through here)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch


def to_torch(array: np.ndarray) -> torch.Tensor:
    """numpy (including ml_dtypes bfloat16) to a torch tensor, sharing memory where possible."""
    if not array.flags.writeable:  # a memory-mapped checkpoint view: torch needs its own copy
        array = np.array(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy of a tensor; bfloat16 becomes ml_dtypes.bfloat16."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
