"""Weight-only int8 / int4 layers for the Flax twin: the twin of llama_torch/quantization.py.

A quantized layer sits where its nn.Dense sat (``q_proj/qweight``, ``q_proj/scales``,
``q_proj/zeros``, ``q_proj/bias``) and holds llama_shared.quantization's format, in Hugging Face's
[out, in] orientation. Its call dequantizes inside the jitted graph and multiplies, leaving XLA to
fuse the two (qwix's weight-only path does the same).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llama_shared import quantization as q
from llama_shared.errors import ConfigError
from llama_shared.naming import flatten_tree, unflatten_tree

Array = jax.Array


def unpack_int4(packed: Array) -> Array:
    """uint8 (out, in // 2) -> int8 codes (out, in): low nibble first, each stored as code + 8."""
    low, high = (packed & 15).astype(jnp.int8) - 8, (packed >> 4).astype(jnp.int8) - 8
    return jnp.stack([low, high], axis=-1).reshape(packed.shape[0], -1)


def dequantize(tensors: dict[str, Array], quantization: q.QuantizationConfig, dtype: Any) -> Array:
    """The (out, in) weight in dtype: (code - zero) * scale per group."""
    qweight, scales = tensors["qweight"], tensors["scales"].astype(dtype)
    codes = qweight if quantization.bits == 8 else unpack_int4(qweight)
    out_features, in_features = codes.shape
    grouped = codes.reshape(out_features, scales.shape[1], -1).astype(dtype)
    if "zeros" in tensors:
        grouped = grouped - tensors["zeros"].astype(dtype)[..., None]
    return (grouped * scales[..., None]).reshape(out_features, in_features)


def quantized_matmul(x: Array, tensors: dict[str, Array], quantization: q.QuantizationConfig) -> Array:
    """x @ W.T for the quantized W; a per-channel symmetric scale multiplies the product instead of W."""
    contract = (((x.ndim - 1,), (1,)), ((), ()))
    if quantization.group_size is None and quantization.symmetric:
        product = jax.lax.dot_general(x, tensors["qweight"].astype(x.dtype), contract)
        return product * tensors["scales"][:, 0].astype(x.dtype)
    return jax.lax.dot_general(x, dequantize(tensors, quantization, x.dtype), contract)


class QuantizedDense(nn.Module):
    """nn.Dense with a quantized weight: same place in the tree, same call."""

    features: int
    quantization: q.QuantizationConfig
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        specs = self.quantization.tensor_specs(self.features, x.shape[-1], self.param_dtype)
        tensors = {leaf: self.param(leaf, nn.initializers.zeros_init(), shape, dtype)
                   for leaf, (shape, dtype) in specs.items()}
        y = quantized_matmul(x.astype(self.dtype), tensors, self.quantization)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype).astype(self.dtype)
        return y


def quantize(model: Any, quantization: str | q.QuantizationConfig = "int4", group_size: int | None = None,
             symmetric: bool = True, modules: tuple[str, ...] | None = None) -> Any:
    """Quantize a loaded FlaxLlama* model in place (config, module, params) and return it.

    The codes come from llama_shared.quantization's numpy reference, so both twins quantize a
    weight to the same integers; the float kernels are dropped as they are replaced.
    """
    settings = q.QuantizationConfig.create(quantization, group_size, symmetric, modules)
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
        if path[-1] == "kernel" and settings.quantizes(path[-2], config):
            kernel = flat.pop(path)
            weight = np.asarray(jax.device_get(kernel)).T
            tensors = q.quantize(weight, settings, np.dtype(kernel.dtype), "/".join(path))
            flat.update({(*path[:-1], leaf): jnp.asarray(array) for leaf, array in tensors.items()})
    model.config, model.params = config, unflatten_tree(flat)
    model.module = type(model).module_class(config, model.dtype, model.param_dtype)
    return model
