"""Weight-only int8 / int4 layers for the torch twin: the twin of llama_flax/quantization.py.

quantize() swaps each targeted nn.Linear for a QuantizedLinear whose state-dict keys are
llama_shared.quantization's format (``q_proj.qweight``, ``q_proj.scales``, ``q_proj.zeros``,
``q_proj.bias``). Its forward dequantizes and multiplies in plain torch ops, so it runs on any
device and under torch.compile; per-channel symmetric int8 on the CPU calls aten's int8 weight-only
kernel instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llama_shared import quantization as q
from llama_shared.errors import ConfigError
from llama_torch.tensors import to_numpy, to_torch


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (out, in // 2) -> int8 codes (out, in): low nibble first, each stored as code + 8."""
    low, high = (packed & 15).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)


def dequantize(tensors: dict[str, torch.Tensor], quantization: q.QuantizationConfig, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight in dtype: (code - zero) * scale per group."""
    qweight, scales = tensors["qweight"], tensors["scales"].to(dtype)
    codes = qweight if quantization.bits == 8 else unpack_int4(qweight)
    out_features, in_features = codes.shape
    grouped = codes.reshape(out_features, scales.shape[1], -1).to(dtype)
    if "zeros" in tensors:
        grouped = grouped - tensors["zeros"].to(dtype)[..., None]
    return (grouped * scales[..., None]).reshape(out_features, in_features)


def quantized_matmul(x: torch.Tensor, tensors: dict[str, torch.Tensor],
                     quantization: q.QuantizationConfig) -> torch.Tensor:
    """x @ W.T for the quantized W; a per-channel symmetric scale multiplies the product instead of W."""
    if quantization.group_size is None and quantization.symmetric:
        qweight, scales = tensors["qweight"], tensors["scales"][:, 0].to(x.dtype)
        if x.device.type == "cpu":
            flat = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), qweight, scales)
            return flat.reshape(*x.shape[:-1], -1)
        return F.linear(x, qweight.to(x.dtype)) * scales
    return F.linear(x, dequantize(tensors, quantization, x.dtype))


class QuantizedLinear(nn.Module):
    """nn.Linear with a quantized weight: same place in the model, same call."""

    def __init__(self, in_features: int, out_features: int, bias: bool, quantization: q.QuantizationConfig,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features, self.quantization = in_features, out_features, quantization
        for leaf, (shape, numpy_dtype) in quantization.tensor_specs(out_features, in_features, "float32").items():
            tensor_dtype = dtype if leaf == "scales" else getattr(torch, numpy_dtype.name)
            self.register_buffer(leaf, torch.zeros(shape, dtype=tensor_dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantization: q.QuantizationConfig, name: str) -> "QuantizedLinear":
        """Quantize an nn.Linear (an empty layer when it lives on the meta device)."""
        weight = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, quantization,
                     weight.dtype, weight.device)
        if weight.device.type != "meta":
            host = to_numpy(weight)
            for leaf, array in q.quantize(host, quantization, host.dtype, name).items():
                getattr(module, leaf).copy_(to_torch(array))
            if linear.bias is not None:
                module.bias.data.copy_(linear.bias.data)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = {leaf: getattr(self, leaf) for leaf in q.QUANTIZED_LEAVES if hasattr(self, leaf)}
        y = quantized_matmul(x, tensors, self.quantization)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.quantization.name}"


def quantize(model: nn.Module, quantization: str | q.QuantizationConfig = "int4", group_size: int | None = None,
             symmetric: bool = True, modules: tuple[str, ...] | None = None) -> Any:
    """Quantize a loaded Llama* model in place (config and linear layers) and return it.

    The codes come from llama_shared.quantization's numpy reference, so both twins quantize a
    weight to the same integers; each float weight is dropped as its layer is replaced.
    """
    settings = q.QuantizationConfig.create(quantization, group_size, symmetric, modules)
    if getattr(model, "adapter_config", None) is not None:
        raise ConfigError("a model with a LoRA adapter cannot be quantized: quantize the base, then add the adapter")
    if q.config_quantization(model.config) is not None:
        raise ConfigError(f"the model is already quantized ({q.config_quantization(model.config).name})")
    model.config = q.with_quantization(model.config, settings)
    replace_linears(model, settings)
    return model


def replace_linears(model: nn.Module, quantization: q.QuantizationConfig) -> None:
    """Swap every nn.Linear that quantization targets for a QuantizedLinear (empty ones on the meta device)."""
    with torch.no_grad():
        for parent_name, parent in list(model.named_modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and quantization.quantizes(name, model.config):
                    path = f"{parent_name}.{name}" if parent_name else name
                    setattr(parent, name, QuantizedLinear.from_linear(child, quantization, path))
