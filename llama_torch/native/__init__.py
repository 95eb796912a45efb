"""The torch twin's binding of llama_shared.native's quantized product: c_api.cc, called through ctypes.

c_api.cc runs the kernel's tasks on an OpenMP team; built with -fopenmp and loaded after torch, it
binds to the libgomp that torch has already loaded, so its threads are torch's own (a pool of its
own made the two take turns on the cores and was slower than aten's kernels). quantized_matmul is the
same product as a torch.library operator, opaque to torch.compile, which compiled graphs call.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
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
    array = ctypes.POINTER(ctypes.c_void_p)
    function.argtypes = [ctypes.c_int, pointer, size, array, array, array, array, ctypes.POINTER(size),
                         size, size, size, size, size]
    function.restype = ctypes.c_char_p
    return function, None


@torch._dynamo.assume_constant_result
def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (None: it can); builds it on first use. A constant to
    torch.compile, which calls it while tracing rather than tracing into ctypes."""
    return load()[1]


class KernelCall:
    """Quantized layers that multiply the same rows (one layer; or q, k and v, gate and up), as one
    kernel call's arguments: their tensors as the kernel takes them (contiguous codes, float32 scales,
    offsets or None) and the pointer arrays to them, built once (a decoding step calls every layer)."""

    def __init__(self, bits: int, layers: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]):
        self.layers = tuple(layers)  # kept alive while the kernel reads their pointers
        self.bits, self.out_features = bits, tuple(qweight.shape[0] for qweight, _, _ in self.layers)
        pointers = ctypes.c_void_p * len(self.layers)
        self.codes = pointers(*(qweight.data_ptr() for qweight, _, _ in self.layers))
        self.scales = pointers(*(scales.data_ptr() for _, scales, _ in self.layers))
        self.offsets = pointers(*(None if offsets is None else offsets.data_ptr() for _, _, offsets in self.layers))
        self.outs = (ctypes.c_int64 * len(self.layers))(*self.out_features)
        self.code_columns, self.groups = self.layers[0][0].shape[1], self.layers[0][1].shape[1]

    def __reduce__(self) -> tuple:
        """Copied or pickled (deepcopy or torch.save of a model) as its tensors: ctypes pointer arrays
        cannot be pickled, and a copy's arrays must point at the copied tensors."""
        return KernelCall, (self.bits, self.layers)

    def multiply(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """rows (n, in), float32 and contiguous, times each layer's W.T on torch's intra-op threads."""
        n, in_features = rows.shape
        ys = [torch.empty(n, out, dtype=torch.float32) for out in self.out_features]
        y_pointers = (ctypes.c_void_p * len(ys))(*(y.data_ptr() for y in ys))
        error = load()[0](self.bits, rows.data_ptr(), len(ys), self.codes, self.scales, self.offsets, y_pointers,
                          self.outs, n, in_features, self.code_columns, self.groups, torch.get_num_threads())
        if error:
            raise ValueError(error.decode())
        return ys


@torch.library.custom_op("llama_twin::quantized_matmul", mutates_args=(),
                         schema="(Tensor rows, Tensor qweight, Tensor scales, Tensor? offsets, int bits) -> Tensor")
def quantized_matmul(rows: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
                     bits: int) -> torch.Tensor:
    """One layer's KernelCall as one operator: what a layer traced by torch.compile calls, its tensors
    being the graph's (frozen weights, on the CPU; made contiguous here, as the kernel reads raw
    pointers and inductor may choose the strides)."""
    layer = (qweight.contiguous(), scales.contiguous(), None if offsets is None else offsets.contiguous())
    return KernelCall(bits, [layer]).multiply(rows.contiguous())[0]


@quantized_matmul.register_fake
def _(rows: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
      bits: int) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], qweight.shape[0])
