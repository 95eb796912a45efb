"""The torch twin's binding of llama_shared.native's quantized product: c_api.cc, called through ctypes.

c_api.cc runs the kernel's tasks on an OpenMP team; built with -fopenmp and loaded after torch, it
binds to the libgomp that torch has already loaded, so its threads are torch's own (a pool of its
own made the two take turns on the cores and was slower than aten's kernels).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import torch

from llama_shared import native

SOURCE = Path(__file__).with_name("c_api.cc")


@functools.cache
def load() -> tuple[Any, str | None]:
    """(c_api.cc's llama_twin_quantized_matmul, None), or (None, why it cannot be built or loaded here)."""
    try:
        library = ctypes.CDLL(str(native.build(SOURCE, flags=["-fopenmp"])))
    except (native.KernelBuildError, OSError) as e:
        return None, str(e)
    function = library.llama_twin_quantized_matmul
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    function.argtypes = [ctypes.c_int, pointer, pointer, pointer, pointer, pointer, size, size, size, size, size, size]
    function.restype = ctypes.c_char_p
    return function, None


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (None: it can); builds it on first use."""
    return load()[1]


def quantized_matmul(bits: int, rows: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                     offsets: torch.Tensor | None) -> torch.Tensor:
    """rows (n, in) float32 times the layer's W.T on torch's intra-op threads; every tensor contiguous."""
    y = torch.empty(rows.shape[0], qweight.shape[0], dtype=torch.float32)
    error = load()[0](bits, rows.data_ptr(), qweight.data_ptr(), scales.data_ptr(),
                      None if offsets is None else offsets.data_ptr(), y.data_ptr(), rows.shape[0], rows.shape[1],
                      qweight.shape[1], qweight.shape[0], scales.shape[1], torch.get_num_threads())
    if error:
        raise ValueError(error.decode())
    return y
