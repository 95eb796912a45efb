"""The torch twin's binding of llama_shared.native's quantized product: c_api.cc, called through ctypes.

c_api.cc runs the kernel's tasks on an OpenMP team; built with -fopenmp and loaded after torch, it
binds to the libgomp that torch has already loaded, so its threads are torch's own (a pool of its
own made the two take turns on the cores and was slower than aten's kernels). quantized_matmul is the
same product as a torch.library operator, opaque to torch.compile, which compiled graphs call.
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


@torch._dynamo.assume_constant_result
def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (None: it can); builds it on first use. A constant to
    torch.compile, which calls it while tracing rather than tracing into ctypes."""
    return load()[1]


class LayerOperands:
    """A quantized layer's tensors as the kernel takes them (contiguous codes, float32 scales, offsets or
    None), with the call's arguments that do not change read once: a decoding step calls every layer."""

    def __init__(self, bits: int, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None):
        self.tensors = (qweight, scales, offsets)  # kept alive while the kernel reads their pointers
        self.bits, self.out_features = bits, qweight.shape[0]
        self.pointers = (qweight.data_ptr(), scales.data_ptr(), None if offsets is None else offsets.data_ptr())
        self.code_columns, self.groups = qweight.shape[1], scales.shape[1]

    def multiply(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (n, in), float32 and contiguous, times the layer's W.T on torch's intra-op threads."""
        n, in_features = rows.shape
        y = torch.empty(n, self.out_features, dtype=torch.float32)
        error = load()[0](self.bits, rows.data_ptr(), *self.pointers, y.data_ptr(), n, in_features,
                          self.code_columns, self.out_features, self.groups, torch.get_num_threads())
        if error:
            raise ValueError(error.decode())
        return y


@torch.library.custom_op("llama_twin::quantized_matmul", mutates_args=(),
                         schema="(Tensor rows, Tensor qweight, Tensor scales, Tensor? offsets, int bits) -> Tensor")
def quantized_matmul(rows: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
                     bits: int) -> torch.Tensor:
    """LayerOperands(bits, qweight, scales, offsets).multiply(rows) as one operator: what a layer
    traced by torch.compile calls, its tensors being the graph's (frozen weights, on the CPU; made
    contiguous here, as the kernel reads raw pointers and inductor may choose the strides)."""
    return LayerOperands(bits, qweight.contiguous(), scales.contiguous(),
                         None if offsets is None else offsets.contiguous()).multiply(rows.contiguous())


@quantized_matmul.register_fake
def _(rows: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
      bits: int) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], qweight.shape[0])
