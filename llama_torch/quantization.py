"""Weight-only int8 / int4 layers for the torch twin: the twin of llama_flax/quantization.py.

quantize() swaps each targeted nn.Linear for a QuantizedLinear whose state-dict keys are
llama_shared.quantization's format (``q_proj.qweight``, ``.scales``, ``.zeros`` or ``.mins``,
``.bias``); a checkpoint that stores the embedding quantized (GGUF) gets a QuantizedEmbedding.
The portable product dequantizes and multiplies in plain torch ops, on any device and under
torch.compile. On the CPU the "auto" kernel instead calls llama_shared.native's C++ product (for
up to its MAX_ROWS rows; llama_torch.native binds it), which reads each code once and never writes
a float weight: the Flax twin's kernel, with its numerics (docs/quantization.md, "Kernels"); under
torch.compile as llama_torch.native's operator, so that compiled decoding keeps it. (aten's ``_weight_int8pack_mm`` and
``_weight_int4pack_mm_for_cpu`` were slower in decoding and are vectorised for bfloat16 only:
benchmarks/log/2026-12-02-quantization.md.) Where the kernel cannot be built (no C++ compiler),
"auto" warns once and takes the portable product; "cpu" is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

from llama_shared import native as shared_native
from llama_shared import quantization as q
from llama_shared.errors import ConfigError
from llama_torch import native
from llama_torch.tensors import to_numpy, to_torch

def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (out, in // 2) -> int8 codes (out, in): low nibble first, each stored as code + 8."""
    low, high = (packed & 15).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)


def dequantize(tensors: dict[str, torch.Tensor], quantization: q.QuantizationConfig, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight in dtype: (code - zero) * scale, or (code - qmin) * scale + min, per group."""
    qweight, scales = tensors["qweight"], tensors["scales"].to(dtype)[..., None]
    codes = qweight if quantization.bits == 8 else unpack_int4(qweight)
    out_features, in_features = codes.shape
    grouped = codes.reshape(out_features, scales.shape[1], -1).to(dtype)
    if "mins" in tensors:
        weight = (grouped - quantization.code_range[0]) * scales + tensors["mins"].to(dtype)[..., None]
    elif "zeros" in tensors:
        weight = (grouped - tensors["zeros"].to(dtype)[..., None]) * scales
    else:
        weight = grouped * scales
    return weight.reshape(out_features, in_features)


def cpu_kernel_reason(quantization: q.QuantizationConfig, in_features: int) -> str | None:
    """Why the native CPU kernel cannot run this layer (None: it can)."""
    return shared_native.format_reason(quantization, in_features) or native.unavailable_reason()


class NativeProduct(torch.autograd.Function):
    """x @ W.T by the native kernel; its derivative in x is the portable product's (QLoRA trains
    through a quantized base)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: "QuantizedWeight") -> torch.Tensor:
        ctx.layer = layer
        return layer.native_product(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        layer = ctx.layer
        return grad @ dequantize(layer.tensors(), layer.quantization, grad.dtype), None


class QuantizedWeight(nn.Module):
    """A module holding one quantized weight W (out_features, in_features), and x @ W.T on the
    configured kernel: the base of QuantizedLinear and QuantizedEmbedding (whose attend() is a tied head)."""

    # (versions of the stored tensors, the kernel's operands): a class default, so that subclasses
    # built from an existing layer (LoraQuantizedLinear) start without operands too.
    _kernel_cache: tuple[tuple[tuple[int, int], ...], native.KernelCall] | None = None

    def __init__(self, in_features: int, out_features: int, quantization: q.QuantizationConfig, dtype: torch.dtype,
                 device: torch.device | str | None):
        super().__init__()
        self.in_features, self.out_features, self.quantization = in_features, out_features, quantization
        register_quantized(self, out_features, in_features, quantization, dtype, device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """{leaf: stored tensor} of the weight."""
        return {leaf: self._buffers[leaf] for leaf in self.quantization.leaves()}

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T by the configured kernel (the portable product off the native kernel's ground)."""
        if not self.uses_cpu_kernel(x):
            return F.linear(x, dequantize(self.tensors(), self.quantization, x.dtype))
        if torch.is_grad_enabled() and x.requires_grad:
            return NativeProduct.apply(x, self)
        return self.native_product(x)

    def uses_cpu_kernel(self, x: torch.Tensor) -> bool:
        """Whether this call takes the native CPU kernel: "auto" for up to llama_shared.native.MAX_ROWS
        rows on the CPU (warning once where it cannot be built), "cpu" always (an error where it cannot run)."""
        kernel = self.quantization.kernel
        compiling = torch.compiler.is_compiling()
        if kernel == "portable" or compiling and torch.is_grad_enabled() and x.requires_grad:
            return False  # compiled training: the portable product, which inductor fuses and differentiates
        on_cpu = x.device.type == "cpu"
        reason = cpu_kernel_reason(self.quantization, self.in_features) if on_cpu else \
            f"the input is on {x.device}, not the CPU"
        # The warning for a kernel that cannot be built is eager only: torch.compile cannot trace it.
        return shared_native.takes_native(kernel, reason, x.numel() // self.in_features,
                                          native.unavailable_reason() if on_cpu and not compiling else None)

    def native_product(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T by the native kernel, returned in x's dtype."""
        rows = kernel_rows(x, self.in_features)
        if torch.compiler.is_compiling():
            y = native.quantized_matmul(rows, *self.kernel_tensors(), self.quantization.bits)
        else:
            y = self.kernel_operands().multiply(rows)[0]
        return as_output(y, x, self.out_features)

    def kernel_operands(self) -> native.KernelCall:
        """The kernel's operands, built on first use and again whenever a stored tensor has changed."""
        tensors = self.tensors()
        versions = tuple((t._version, t.data_ptr()) for t in tensors.values())
        if self._kernel_cache is None or self._kernel_cache[0] != versions:
            with torch.no_grad():
                operands = native.KernelCall(self.quantization.bits, [self.kernel_tensors()])
            self._kernel_cache = (versions, operands)
        return self._kernel_cache[1]

    def kernel_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(codes, float32 scales, offsets or None), contiguous: the kernel's operands as tensors."""
        tensors = self.tensors()
        scales = tensors["scales"].float().contiguous()
        offsets = shared_native.kernel_offsets(tensors, scales, self.quantization.code_range[0])
        return tensors["qweight"].contiguous(), scales, None if offsets is None else offsets.contiguous()


def kernel_rows(x: torch.Tensor, in_features: int) -> torch.Tensor:
    """x as the kernel takes it: (rows, in_features), float32, contiguous, outside autograd."""
    rows = x.detach().reshape(-1, in_features)
    return rows if rows.dtype == torch.float32 and rows.is_contiguous() else rows.to(torch.float32).contiguous()


def as_output(y: torch.Tensor, x: torch.Tensor, out_features: int) -> torch.Tensor:
    """The kernel's float32 rows as a layer's output for x: x's dtype and leading axes."""
    return (y if x.dtype == torch.float32 else y.to(x.dtype)).reshape(*x.shape[:-1], out_features)


class QuantizedLinear(QuantizedWeight):
    """nn.Linear with a quantized weight: same place in the model, same call."""

    # (the kernel calls of the layers whose products shared_input_products last joined with this
    # first one, their joined call): rebuilt when any of theirs is.
    _shared_call: tuple[tuple[native.KernelCall, ...], native.KernelCall] | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool, quantization: q.QuantizationConfig,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__(in_features, out_features, quantization, dtype, device)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantization: q.QuantizationConfig, name: str) -> "QuantizedLinear":
        """Quantize an nn.Linear (an empty layer when it lives on the meta device)."""
        weight = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, quantization,
                     weight.dtype, weight.device)
        if weight.device.type != "meta":
            fill_quantized(module, to_numpy(weight), quantization, name)
            if linear.bias is not None:
                module.bias.data.copy_(linear.bias.data)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.product(x)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.quantization.name}"


class QuantizedEmbedding(QuantizedWeight):
    """nn.Embedding with quantized rows (a checkpoint that stores it so, e.g. GGUF): rows are
    gathered, then dequantized; attend() is the tied language-model head's product, on the
    configured kernel like a QuantizedLinear's."""

    def __init__(self, num_embeddings: int, embedding_dim: int, quantization: q.QuantizationConfig,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__(embedding_dim, num_embeddings, quantization, dtype, device)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.dtype = dtype  # what rows dequantize to

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = {leaf: getattr(self, leaf)[input_ids.reshape(-1)] for leaf in self.quantization.leaves()}
        return dequantize(rows, self.quantization, self.dtype).reshape(*input_ids.shape, self.embedding_dim)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.quantization.name}"


class TiedQuantizedHead(nn.Module):
    """The language-model head tied to a QuantizedEmbedding: its product, with no tensors of its own."""

    def __init__(self, embedding: QuantizedEmbedding):
        super().__init__()
        self.embedding = [embedding]  # a list, so that the embedding is not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding[0].attend(x)


def shared_input_products(x: torch.Tensor, layers: Sequence[nn.Module]) -> list[torch.Tensor]:
    """[layer(x) for layer in layers] (q, k and v; gate and up), as one native kernel call where every
    layer is a plain QuantizedLinear of one format that takes the kernel for x in an eager forward
    without hooks: x is rounded once and the threads start once, and each output is the one its layer
    alone would give, bit for bit. Otherwise (float, LoRA or hooked layers, torch.compile, training)
    each layer is called."""
    first = layers[0]
    plain = all(type(layer) is QuantizedLinear and layer.quantization == first.quantization
                and not (layer._forward_hooks or layer._forward_pre_hooks) for layer in layers)
    if (not plain or torch.compiler.is_compiling() or torch.is_grad_enabled() and x.requires_grad
            or has_global_module_hooks() or not first.uses_cpu_kernel(x)):
        return [layer(x) for layer in layers]
    calls = tuple(layer.kernel_operands() for layer in layers)
    cached = first._shared_call
    if cached is None or len(cached[0]) != len(calls) or any(a is not b for a, b in zip(cached[0], calls)):
        cached = first._shared_call = (calls, native.KernelCall(first.quantization.bits, [c.layers[0] for c in calls]))
    rows = kernel_rows(x, first.in_features)
    ys = [as_output(y, x, layer.out_features) for y, layer in zip(cached[1].multiply(rows), layers)]
    return [y + layer.bias if layer.bias is not None else y for y, layer in zip(ys, layers)]


def has_global_module_hooks() -> bool:
    """Whether global forward hooks are registered (nn.modules.module.register_module_forward_hook):
    they see every module's call."""
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def register_quantized(module: nn.Module, out_features: int, in_features: int, quantization: q.QuantizationConfig,
                       dtype: torch.dtype, device: torch.device | str | None) -> None:
    """Register a quantized layer's tensors as buffers (scales in the config's scale dtype, else dtype)."""
    for leaf, (shape, numpy_dtype) in quantization.tensor_specs(out_features, in_features, "float32").items():
        if leaf in ("scales", "mins"):
            tensor_dtype = getattr(torch, quantization.scale_dtype) if quantization.scale_dtype else dtype
        else:
            tensor_dtype = getattr(torch, numpy_dtype.name)
        module.register_buffer(leaf, torch.zeros(shape, dtype=tensor_dtype, device=device))


def fill_quantized(module: nn.Module, weight: Any, quantization: q.QuantizationConfig, name: str) -> None:
    """Quantize a float weight (numpy reference) into a layer's buffers."""
    for leaf, array in q.quantize(weight, quantization, weight.dtype, name).items():
        getattr(module, leaf).copy_(to_torch(array))


def quantize(model: nn.Module, quantization: str | q.QuantizationConfig = "int4", group_size: int | None = None,
             symmetric: bool = True, modules: tuple[str, ...] | None = None, zero_point_domain: str = "int") -> Any:
    """Quantize a loaded Llama* model in place (config and linear layers) and return it.

    The codes come from llama_shared.quantization's numpy reference, so both twins quantize a
    weight to the same integers; each float weight is dropped as its layer is replaced.
    """
    settings = q.QuantizationConfig.create(quantization, group_size, symmetric, modules, zero_point_domain)
    if getattr(model, "adapter_config", None) is not None:
        raise ConfigError("a model with a LoRA adapter cannot be quantized: quantize the base, then add the adapter")
    if q.config_quantization(model.config) is not None:
        raise ConfigError(f"the model is already quantized ({q.config_quantization(model.config).name})")
    model.config = q.with_quantization(model.config, settings)
    replace_linears(model, settings)
    return model


def use_kernel(model: nn.Module, kernel: str) -> nn.Module:
    """Set how a quantized model's layers multiply (one of llama_shared.quantization.KERNELS) and return it."""
    settings = q.config_quantization(model.config)
    if settings is None:
        raise ConfigError("the model is not quantized: there is no quantized kernel to choose")
    settings = q.with_kernel(settings, kernel)
    model.config = q.with_quantization(model.config, settings)
    for module in model.modules():
        if isinstance(module, QuantizedWeight):
            module.quantization = settings
    return model


def replace_linears(model: nn.Module, quantization: q.QuantizationConfig) -> None:
    """Swap every nn.Linear (and nn.Embedding) that quantization targets for its quantized layer
    (empty ones on the meta device); a head tied to a quantized embedding becomes its product."""
    with torch.no_grad():
        for parent_name, parent in list(model.named_modules()):
            for name, child in list(parent.named_children()):
                path = f"{parent_name}.{name}" if parent_name else name
                if isinstance(child, nn.Linear) and quantization.quantizes(name, model.config):
                    setattr(parent, name, QuantizedLinear.from_linear(child, quantization, path))
                elif isinstance(child, nn.Embedding) and quantization.quantizes(name, model.config):
                    weight = child.weight
                    embedding = QuantizedEmbedding(child.num_embeddings, child.embedding_dim, quantization,
                                                   weight.dtype, weight.device)
                    if weight.device.type != "meta":
                        fill_quantized(embedding, to_numpy(weight), quantization, path)
                    setattr(parent, name, embedding)
        embedding = getattr(getattr(model, "model", None), "embed_tokens", None)
        if isinstance(embedding, QuantizedEmbedding) and model.config.tie_word_embeddings and hasattr(model, "lm_head"):
            model.lm_head = TiedQuantizedHead(embedding)
