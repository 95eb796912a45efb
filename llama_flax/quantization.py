"""Weight-only int8 / int4 layers for the Flax twin: the twin of llama_torch/quantization.py.

A quantized layer sits where its nn.Dense sat (``q_proj/qweight``, ``q_proj/scales``,
``q_proj/zeros`` or ``q_proj/mins``, ``q_proj/bias``) and holds llama_shared.quantization's format,
in Hugging Face's [out, in] orientation; a checkpoint that stores the embedding quantized (GGUF)
gets a QuantizedEmbed. The portable product dequantizes the whole weight inside the jitted graph
and multiplies (qwix's weight-only path does the same): on any backend, and differentiable.
XLA:CPU does not fuse that dequantization into the dot, so it writes and reads a float weight
every step; on the CPU the "auto" kernel instead calls llama_shared.native's C++ product (for up
to its MAX_ROWS rows), which reads each code once and never writes a float weight: float32 for
several input rows (the portable values summed in another order), x rounded to int16 per 32 columns
for one (docs/quantization.md, "Kernels"). Where the kernel cannot be built
(no C++ compiler), "auto" warns once and takes the portable product; "cpu" is an error.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llama_flax import native
from llama_shared import native as shared_native
from llama_shared import quantization as q
from llama_shared.errors import ConfigError
from llama_shared.naming import flatten_tree, unflatten_tree

Array = jax.Array


def unpack_int4(packed: Array) -> Array:
    """uint8 (out, in // 2) -> int8 codes (out, in): low nibble first, each stored as code + 8."""
    low, high = (packed & 15).astype(jnp.int8) - 8, (packed >> 4).astype(jnp.int8) - 8
    return jnp.stack([low, high], axis=-1).reshape(packed.shape[0], -1)


def dequantize(tensors: dict[str, Array], quantization: q.QuantizationConfig, dtype: Any) -> Array:
    """The (out, in) weight in dtype: (code - zero) * scale, or (code - qmin) * scale + min, per group."""
    qweight = tensors["qweight"]
    codes = qweight if quantization.bits == 8 else unpack_int4(qweight)
    scales = tensors["scales"].astype(dtype)[..., None]
    rows, columns = codes.shape
    grouped = codes.reshape(rows, scales.shape[1], -1).astype(dtype)
    if "mins" in tensors:
        values = (grouped - quantization.code_range[0]) * scales + tensors["mins"].astype(dtype)[..., None]
    elif "zeros" in tensors:
        values = (grouped - tensors["zeros"].astype(dtype)[..., None]) * scales
    else:
        values = grouped * scales
    return values.reshape(rows, columns)


def portable_matmul(x: Array, tensors: dict[str, Array], quantization: q.QuantizationConfig) -> Array:
    """x @ W.T with W dequantized whole; a per-channel symmetric scale multiplies the product instead of W."""
    contract = (((x.ndim - 1,), (1,)), ((), ()))
    if quantization.group_size is None and quantization.symmetric:
        product = jax.lax.dot_general(x, tensors["qweight"].astype(x.dtype), contract)
        return product * tensors["scales"][:, 0].astype(x.dtype)
    return jax.lax.dot_general(x, dequantize(tensors, quantization, x.dtype), contract)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def native_matmuls(x: Array, layers: tuple[dict[str, Array], ...],
                   quantization: q.QuantizationConfig) -> tuple[Array, ...]:
    """x @ W.T for each layer's W by llama_shared.native's C++ kernel (llama_flax.native binds it) in one
    call, which rounds x once (layers of one format that multiply the same x: q, k and v; gate and up),
    returned in x's dtype; their derivatives are the portable products'."""
    rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    operands, results = [], []
    for tensors in layers:
        scales = tensors["scales"].astype(jnp.float32)
        offsets = shared_native.kernel_offsets(tensors, scales, quantization.code_range[0])
        operands += [tensors["qweight"], scales, jnp.zeros((0,), jnp.float32) if offsets is None else offsets]
        results.append(jax.ShapeDtypeStruct((rows.shape[0], tensors["qweight"].shape[0]), jnp.float32))
    products = jax.ffi.ffi_call(native.TARGETS[quantization.bits][0], results)(rows, *operands)
    return tuple(y.astype(x.dtype).reshape(*x.shape[:-1], y.shape[-1]) for y in products)


@native_matmuls.defjvp
def _native_matmuls_jvp(quantization: q.QuantizationConfig, primals: tuple, tangents: tuple) -> tuple[tuple, tuple]:
    x, layers = primals
    x_tangent, layer_tangents = tangents
    products = tuple(jax.jvp(lambda x, tensors: portable_matmul(x, tensors, quantization), (x, tensors),
                             (x_tangent, tensor_tangents))[1]
                     for tensors, tensor_tangents in zip(layers, layer_tangents))
    return native_matmuls(*primals, quantization), products


def cpu_kernel_reason(quantization: q.QuantizationConfig, in_features: int) -> str | None:
    """Why the native CPU kernel cannot run this layer (None: it can)."""
    if jax.default_backend() != "cpu":
        return f"the backend is {jax.default_backend()}, not the CPU"
    return shared_native.format_reason(quantization, in_features) or native.unavailable_reason()


def takes_native(x: Array, quantization: q.QuantizationConfig) -> bool:
    """Whether a layer of this format takes the native kernel for x: never on kernel "portable" (which
    builds nothing), else llama_shared.native.takes_native's choice (it warns, or raises, where the
    kernel cannot run)."""
    if quantization.kernel == "portable":
        return False
    unavailable = native.unavailable_reason() if jax.default_backend() == "cpu" else None
    return shared_native.takes_native(quantization.kernel, cpu_kernel_reason(quantization, x.shape[-1]),
                                      x.size // x.shape[-1], unavailable)


def quantized_matmul(x: Array, tensors: dict[str, Array], quantization: q.QuantizationConfig) -> Array:
    """x @ W.T for the quantized W by the configured kernel: "auto" takes the native kernel on the CPU
    for up to llama_shared.native.MAX_ROWS rows (warning once, then the portable product, where it cannot be built),
    "cpu" always (an error where it cannot run), "portable" never."""
    if takes_native(x, quantization):
        return native_matmuls(x, (tensors,), quantization)[0]
    return portable_matmul(x, tensors, quantization)


class QuantizedDense(nn.Module):
    """nn.Dense with a quantized weight: same place in the tree, same call."""

    features: int
    quantization: q.QuantizationConfig
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        tensors = quantized_params(self, self.features, x.shape[-1], self.quantization, self.param_dtype)
        y = quantized_matmul(x.astype(self.dtype), tensors, self.quantization)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype).astype(self.dtype)
        return y


class QuantizedEmbed(nn.Module):
    """nn.Embed with quantized rows (a checkpoint that stores it so, e.g. GGUF): rows are gathered,
    then dequantized; attend() is the tied language-model head's product."""

    num_embeddings: int
    features: int
    quantization: q.QuantizationConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        self.tensors = quantized_params(self, self.num_embeddings, self.features, self.quantization, self.param_dtype)

    def __call__(self, input_ids: Array) -> Array:
        rows = {leaf: t[input_ids.reshape(-1)] for leaf, t in self.tensors.items()}
        return dequantize(rows, self.quantization, self.dtype).reshape(*input_ids.shape, self.features)

    def attend(self, x: Array) -> Array:
        return quantized_matmul(x.astype(self.dtype), dict(self.tensors), self.quantization)


def shared_input_products(x: Array, layers: Sequence[nn.Module]) -> list[Array]:
    """[layer(x) for layer in layers] (q, k and v; gate and up), as one native kernel call where every
    layer is a plain QuantizedDense of one format, with its params, that takes the kernel for x: x is
    rounded once and the threads start once, and each output is the one its layer alone would give,
    bit for bit. Otherwise (float or LoRA layers, init) each layer is called."""
    first = layers[0]
    plain = all(type(layer) is QuantizedDense and layer.quantization == first.quantization
                and layer.dtype == first.dtype and layer.has_variable("params", "qweight") for layer in layers)
    if not plain or not takes_native(x, first.quantization):
        return [layer(x) for layer in layers]
    params = [layer.variables["params"] for layer in layers]
    leaves = first.quantization.leaves()
    ys = native_matmuls(x.astype(first.dtype), tuple({leaf: p[leaf] for leaf in leaves} for p in params),
                        first.quantization)
    return [y + p["bias"].astype(first.dtype) if layer.use_bias else y for y, p, layer in zip(ys, params, layers)]


def quantized_params(module: nn.Module, out_features: int, in_features: int, quantization: q.QuantizationConfig,
                     param_dtype: Any) -> dict[str, Array]:
    """Declare a quantized layer's tensors as params (scales in the config's scale dtype, else param_dtype)."""
    specs = quantization.tensor_specs(out_features, in_features, param_dtype)
    return {leaf: module.param(leaf, nn.initializers.zeros_init(), shape, dtype) for leaf, (shape, dtype) in specs.items()}


def quantize(model: Any, quantization: str | q.QuantizationConfig = "int4", group_size: int | None = None,
             symmetric: bool = True, modules: tuple[str, ...] | None = None, zero_point_domain: str = "int") -> Any:
    """Quantize a loaded FlaxLlama* model in place (config, module, params) and return it.

    The codes come from llama_shared.quantization's numpy reference, so both twins quantize a
    weight to the same integers; the float kernels are dropped as they are replaced.
    """
    settings = q.QuantizationConfig.create(quantization, group_size, symmetric, modules, zero_point_domain)
    if model.module.scan_layers:
        raise ConfigError("a model with scan_layers=True cannot be quantized: quantized models run unrolled "
                          "(load it without scan_layers)")
    if getattr(model, "adapter_config", None) is not None:
        raise ConfigError("a model with a LoRA adapter cannot be quantized: quantize the base, then add the adapter")
    if q.config_quantization(model.config) is not None:
        raise ConfigError(f"the model is already quantized ({q.config_quantization(model.config).name})")
    config = q.with_quantization(model.config, settings)
    flat = flatten_tree(model.params)
    for path in list(flat):
        if path[-1] in ("kernel", "embedding") and settings.quantizes(path[-2], config):
            weight = flat.pop(path)
            host = np.asarray(jax.device_get(weight))
            tensors = q.quantize(host.T if path[-1] == "kernel" else host, settings, np.dtype(weight.dtype),
                                 "/".join(path))
            flat.update({(*path[:-1], leaf): jnp.asarray(array) for leaf, array in tensors.items()})
    model.config, model.params = config, unflatten_tree(flat)
    model.module = type(model).module_class(config, model.dtype, model.param_dtype)
    return model


def use_kernel(model: Any, kernel: str) -> Any:
    """Set how a quantized model's layers multiply (one of llama_shared.quantization.KERNELS) and return it."""
    settings = q.config_quantization(model.config)
    if settings is None:
        raise ConfigError("the model is not quantized: there is no quantized kernel to choose")
    model.config = q.with_quantization(model.config, q.with_kernel(settings, kernel))
    model.module = type(model).module_class(model.config, model.dtype, model.param_dtype)
    return model
