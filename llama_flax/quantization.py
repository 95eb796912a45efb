"""Weight-only int8 / int4 layers for the Flax twin: the twin of llama_torch/quantization.py.

A quantized layer sits where its nn.Dense sat (``q_proj/qweight``, ``q_proj/scales``,
``q_proj/zeros`` or ``q_proj/mins``, ``q_proj/bias``) and holds llama_shared.quantization's format,
in Hugging Face's [out, in] orientation; a checkpoint that stores the embedding quantized (GGUF)
gets a QuantizedEmbed. The portable product dequantizes the whole weight inside the jitted graph
and multiplies (qwix's weight-only path does the same). XLA:CPU does not fuse the dequantization
into the dot, so that writes and reads a float weight every step; for a few rows on the CPU the
"auto" kernel instead walks the weight in blocks of BLOCK_ROWS output rows (a lax.map), each
dequantized into a float block that stays in the core's cache and multiplied there, so memory
holds only the integer weight. int4 blocks are split into their low and high nibbles, multiplied
by the even and odd input columns, so the codes are never interleaved back. Same float32 values
as the portable path; only the order of the sums differs.
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
# Output rows per block of the CPU kernel, and the most input rows "auto" gives it (a prompt of up to
# 32 tokens included; more rows amortise a whole dequantized weight over a multi-core float product).
BLOCK_ROWS = 32
BLOCKED_MAX_ROWS = 32


def unpack_int4(packed: Array) -> Array:
    """uint8 (out, in // 2) -> int8 codes (out, in): low nibble first, each stored as code + 8."""
    low, high = nibbles(packed)
    return jnp.stack([low, high], axis=-1).reshape(packed.shape[0], -1)


def nibbles(packed: Array) -> tuple[Array, Array]:
    """The codes of the even (low nibble) and odd (high nibble) input columns, int8."""
    return (packed & 15).astype(jnp.int8) - 8, (packed >> 4).astype(jnp.int8) - 8


def affine(codes: Array, tensors: dict[str, Array], quantization: q.QuantizationConfig, dtype: Any) -> Array:
    """Codes (rows, columns) to values in dtype, the group scales spread evenly over the columns:
    (code - zero) * scale, or (code - qmin) * scale + min."""
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


def dequantize(tensors: dict[str, Array], quantization: q.QuantizationConfig, dtype: Any) -> Array:
    """The (out, in) weight in dtype."""
    qweight = tensors["qweight"]
    return affine(qweight if quantization.bits == 8 else unpack_int4(qweight), tensors, quantization, dtype)


def portable_matmul(x: Array, tensors: dict[str, Array], quantization: q.QuantizationConfig) -> Array:
    """x @ W.T with W dequantized whole; a per-channel symmetric scale multiplies the product instead of W."""
    contract = (((x.ndim - 1,), (1,)), ((), ()))
    if quantization.group_size is None and quantization.symmetric:
        product = jax.lax.dot_general(x, tensors["qweight"].astype(x.dtype), contract)
        return product * tensors["scales"][:, 0].astype(x.dtype)
    return jax.lax.dot_general(x, dequantize(tensors, quantization, x.dtype), contract)


def blocked_matmul(x: Array, tensors: dict[str, Array], quantization: q.QuantizationConfig) -> Array:
    """x @ W.T one block of BLOCK_ROWS output rows at a time, each block dequantized where it is used."""
    rows = x.reshape(-1, x.shape[-1])
    out_features = tensors["qweight"].shape[0]
    blocks = {leaf: t.reshape(out_features // BLOCK_ROWS, BLOCK_ROWS, *t.shape[1:]) for leaf, t in tensors.items()}
    if quantization.bits == 8:
        def block_product(block: dict[str, Array]) -> Array:
            return affine(block["qweight"], block, quantization, x.dtype) @ rows.T
    else:
        even, odd = rows[:, 0::2].T, rows[:, 1::2].T

        def block_product(block: dict[str, Array]) -> Array:
            low, high = nibbles(block["qweight"])
            return affine(low, block, quantization, x.dtype) @ even + affine(high, block, quantization, x.dtype) @ odd
    products = jax.lax.map(block_product, blocks)
    return products.reshape(out_features, -1).T.reshape(*x.shape[:-1], out_features)


def cpu_kernel_reason(out_features: int) -> str | None:
    """Why the CPU kernel (the blocked product) cannot run this layer (None: it can)."""
    if jax.default_backend() != "cpu":
        return f"the backend is {jax.default_backend()}, not the CPU"
    if out_features % BLOCK_ROWS:
        return f"the layer's {out_features} output rows are not a multiple of {BLOCK_ROWS}"
    return None


def quantized_matmul(x: Array, tensors: dict[str, Array], quantization: q.QuantizationConfig) -> Array:
    """x @ W.T for the quantized W by the configured kernel: "auto" takes the blocked product on the
    CPU for up to BLOCKED_MAX_ROWS rows, "cpu" always (an error where it cannot run)."""
    if quantization.kernel == "portable":
        return portable_matmul(x, tensors, quantization)
    reason = cpu_kernel_reason(tensors["qweight"].shape[0])
    if quantization.kernel == "cpu":
        if reason:
            raise ConfigError(f"quantization kernel 'cpu' cannot run here: {reason}; use kernel 'auto' or 'portable'")
        return blocked_matmul(x, tensors, quantization)
    if reason or x.size // x.shape[-1] > BLOCKED_MAX_ROWS:
        return portable_matmul(x, tensors, quantization)
    return blocked_matmul(x, tensors, quantization)


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
