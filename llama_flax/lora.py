"""LoRA adapters for the Flax twin: the twin of llama_torch/lora.py.

A targeted linear layer is a LoraDense (or, over a quantized base, a LoraQuantizedDense: QLoRA): the
base layer's params where they always are (q_proj/kernel, or q_proj/qweight...) and the adapter's
beside them as q_proj/lora_A/kernel [in, r] and q_proj/lora_B/kernel [r, out], transformers' Flax
paths of PEFT's q_proj.lora_A.weight [r, in] and q_proj.lora_B.weight [out, r]. The layer adds
scaling * B(A(dropout(x))); dropout is active only when the call is given a "dropout" rng (the
Trainer does). linear() in modeling.py picks these layers when the module's config carries an
adapter (llama_shared.lora.with_adapter), so scanned layers, remat and meshes see ordinary params.

Google's qwix (its LoraProvider) was evaluated and is not used: it intercepts jax.lax.dot_general
calls by parameter, so it adds no update to the project's QuantizedDense (int4: silently nothing,
int8: an error initialising the adapter in int8), none on the one-row CPU product of
llama_flax.matmul (batch-1 decoding silently drops the adapter) and none on a tied lm_head; it has no
rsLoRA scaling, applies dropout whenever its rate is non-zero (inference included), and has no merge.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llama_flax.matmul import dense_dot_general
from llama_flax.quantization import QuantizedDense
from llama_flax.scan import stack_flat, unrolled_leaves
from llama_shared import lora
from llama_shared import quantization as q
from llama_shared.errors import ConfigError
from llama_shared.lora import LoraConfig
from llama_shared.naming import flatten_tree, hf_key, unflatten_tree

Array = jax.Array
ADAPTER_DTYPE = jnp.float32  # adapters stay float32 over any base (PEFT's autocast_adapter_dtype)


def lora_a_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = ADAPTER_DTYPE) -> Array:
    """PEFT's lora_A initialisation on a [in, r] kernel (stacked: [layers, in, r]): uniform in +-1/sqrt(in)."""
    bound = lora.init_bound(shape[-2])
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def lora_update(module: nn.Module, x: Array, features: int, adapter: LoraConfig) -> Array:
    """scaling * B(A(dropout(x))) with lora_A and lora_B as submodules of module (call it from the
    module's compact method); dropout only when the call has a "dropout" rng."""
    if adapter.lora_dropout and module.has_rng("dropout"):
        x = nn.Dropout(adapter.lora_dropout, deterministic=False)(x)
    dense = lambda size, name, init: nn.Dense(size, use_bias=False, dtype=module.dtype,  # noqa: E731
                                             param_dtype=ADAPTER_DTYPE, kernel_init=init, name=name,
                                             dot_general=dense_dot_general)
    hidden = dense(adapter.r, "lora_A", lora_a_init)(x)
    return dense(features, "lora_B", nn.initializers.zeros_init())(hidden) * adapter.scaling


class LoraDense(nn.Dense):
    """nn.Dense plus an adapter's update: the base params where nn.Dense keeps them."""

    adapter: LoraConfig | None = None

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        return super().__call__(inputs) + lora_update(self, inputs, self.features, self.adapter)


class LoraQuantizedDense(QuantizedDense):
    """QuantizedDense plus an adapter's update (QLoRA): the frozen base stays quantized."""

    adapter: LoraConfig | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return super().__call__(x) + lora_update(self, x, self.features, self.adapter)


class LoraUpdate(nn.Module):
    """An adapter's update alone: a tied lm_head's, whose base product is the embedding's attend."""

    features: int
    adapter: LoraConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return lora_update(self, x, self.features, self.adapter)


def merged_weight(kernel: Array, lora_a: Array, lora_b: Array, scaling: float) -> Array:
    """kernel + scaling * A @ B in float32, in the kernel's dtype ([in, out], stacked or not)."""
    delta = jnp.einsum("...ir,...ro->...io", lora_a.astype(jnp.float32), lora_b.astype(jnp.float32))
    return (kernel.astype(jnp.float32) + scaling * delta).astype(kernel.dtype)


class LoraMixin:
    """Adapter methods of FlaxLlamaForCausalLM, as transformers' and PEFT's (add_adapter,
    load_adapter, merge_adapter, unmerge_adapter, merge_and_unload) plus save_adapter.

    The adapter's params live in model.params beside the base's; the model's module is built from a
    config that carries the adapter. Merging keeps the base kernels aside, so unmerging restores them
    bit for bit.
    """

    _merged: tuple[LoraConfig, dict, dict] | None = None

    @property
    def adapter_config(self) -> LoraConfig | None:
        """The adapter in place (merged or not), its target_modules resolved to leaf names; None without one."""
        return self._merged[0] if self._merged is not None else lora.config_adapter(self.module.config)

    def add_adapter(self, adapter: LoraConfig, seed: int = 0) -> None:
        """Put a new adapter on the model, initialised as PEFT does (A uniform in +-1/sqrt(in), B zeros),
        so the model computes what it computed before; a seed draws the same adapter for scanned and
        unrolled layers."""
        self._require_no_adapter()
        self._set_adapter(adapter)
        specs = {path: spec for path, spec in self.param_shapes(unrolled=True).items() if lora.is_adapter_path(path)}
        keys = jax.random.split(jax.random.PRNGKey(seed), len(specs))
        fresh = {path: lora_a_init(key, spec.shape) if "lora_A" in path else jnp.zeros(spec.shape, ADAPTER_DTYPE)
                 for (path, spec), key in zip(specs.items(), keys)}
        self.params = lora.join_params(self.params, unflatten_tree(stack_flat(fresh) if self.scan_layers else fresh))

    def load_adapter(self, directory: str | os.PathLike) -> None:
        """Put the adapter of a PEFT folder on the model; names, shapes and settings are checked
        against the model before anything is built."""
        self._require_no_adapter()
        files = lora.read_adapter(directory, self.config)
        adapter = files.config
        self._check_base_weights(files)
        self._set_adapter(adapter)
        try:
            specs = {path: spec for path, spec in self.param_shapes(unrolled=True).items()
                     if lora.is_adapter_path(path)}
            lora.check_adapter_tensors({hf_key(path)[0]: tuple(reversed(spec.shape)) for path, spec in specs.items()},
                                       files)
        except Exception:
            self._set_adapter(None)
            raise
        flat = {path: jnp.asarray(np.ascontiguousarray(files.tensors[hf_key(path)[0]].T), ADAPTER_DTYPE)
                for path in specs}
        adapter_params = unflatten_tree(stack_flat(flat) if self.scan_layers else flat)
        self.params = lora.join_params(self.params, adapter_params)

    def save_adapter(self, directory: str | os.PathLike) -> None:
        """Write the adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors) that
        peft.PeftModel.from_pretrained and both twins load."""
        adapter = self.adapter_config
        if adapter is None:
            raise ConfigError("the model has no adapter to save")
        params = self._merged[1] if self._merged is not None else lora.split_adapter(self.params)[0]
        leaves = sorted((hf_key(path)[0], value) for path, value in unrolled_leaves(params).items())
        tensors = ((key, np.asarray(jax.device_get(array if index is None else array[index])).T)
                   for key, (array, index) in leaves)
        lora.write_adapter(directory, adapter, tensors, getattr(self, "name_or_path", None))

    def merge_adapter(self) -> None:
        """Fold the adapter into the base kernels (W + scaling * A B, in float32); the model then runs
        without the update and unmerge_adapter restores the base bit for bit."""
        adapter = self.adapter_config
        if adapter is None or self._merged is not None:
            raise ConfigError("the model has no unmerged adapter to merge")
        lora.check_mergeable(adapter, self.config)
        adapter_params, base = lora.split_adapter(self.params)
        flat, updates, kept = flatten_tree(base), flatten_tree(adapter_params), {}
        for path, lora_a in updates.items():
            if path[-2] == "lora_A":
                kernel_path = (*path[:-2], "kernel")
                lora_b = updates[(*path[:-2], "lora_B", "kernel")]
                kept[kernel_path] = flat[kernel_path]
                flat[kernel_path] = merged_weight(flat[kernel_path], lora_a, lora_b, adapter.scaling)
        self._merged = (adapter, adapter_params, kept)
        self._set_adapter(None)
        self.params = unflatten_tree(flat)

    def unmerge_adapter(self) -> None:
        """Undo merge_adapter: the base kernels as they were, the adapter applied as an update again."""
        if self._merged is None:
            raise ConfigError("the model has no merged adapter")
        adapter, adapter_params, kept = self._merged
        self._merged = None
        self._set_adapter(adapter)
        self.params = lora.join_params(unflatten_tree({**flatten_tree(self.params), **kept}), adapter_params)

    def merge_and_unload(self) -> Any:
        """Merge the adapter and drop it: the model becomes a plain one (save_pretrained writes a
        Hugging Face folder). Returns the model."""
        if self._merged is None:
            self.merge_adapter()
        self._merged = None
        return self

    def _require_no_adapter(self) -> None:
        if self.adapter_config is not None:
            raise ConfigError("the model already has an adapter; merge_and_unload() it or load a fresh model")

    def _set_adapter(self, adapter: LoraConfig | None) -> None:
        """Rebuild the module with (or without) the adapter, keeping dtype, remat and scanning."""
        self.module = self.module.clone(config=lora.with_adapter(self.config, adapter))

    def _check_base_weights(self, files: lora.AdapterFiles) -> None:
        quantization = q.config_quantization(self.config)
        flat = unrolled_leaves(self.params)
        for key, stored in files.base_weights.items():
            module = tuple(key.split(".")[:-1])
            if self.config.tie_word_embeddings and module == ("lm_head",):
                module, leaves = ("model", "embed_tokens"), {"weight": "embedding"}
            elif quantization is not None and quantization.quantizes(module[-1], self.config):
                leaves = {leaf: leaf for leaf in q.QUANTIZED_LEAVES if (*module, leaf) in flat}
            else:
                leaves = {"weight": "kernel"}
            actual = {}
            for name, leaf in leaves.items():
                array, index = flat[(*module, leaf)]
                value = np.asarray(jax.device_get(array if index is None else array[index]))
                actual[name] = value.T if leaf == "kernel" else value
            lora.check_base_weight(key, stored, actual, quantization if "qweight" in actual else None,
                                   files.directory)
