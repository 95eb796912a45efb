"""from_pretrained / save_pretrained and the jitted call for the Flax twin, on Hugging Face's folder layout.

The twin of llama_torch/loading.py. A FlaxLlama* model holds its Linen module, its config and its
params (a nested dict with transformers' Flax paths). Weights stream from safetensors one tensor
at a time; transformers' old flax_model.msgpack files load too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import serialization

from llama_flax.generation import GenerationMixin
from llama_flax.quantization import quantize
from llama_flax.scan import stack_flat, unrolled_leaves
from llama_shared import layout
from llama_shared import quantization as q
from llama_shared.checkpoints import (DEFAULT_SHARD_SIZE, INDEX_FILE, SINGLE_FILE, Checkpoint, requested_dtype,
                                     tensor_nbytes, write_checkpoint)
from llama_shared.checkpoints.model_files import open_model_files
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError
from llama_shared.files import open_regular
from llama_shared.generation import GenerationConfig
from llama_shared.naming import flatten_tree, hf_key, hf_key_order, unflatten_tree
from llama_shared.parameters import check_tensors, checkpoint_specs
from llama_shared.progress import byte_progress
from llama_shared.quantization import QuantizationConfig, checkpoint_metadata, open_for_loading

MSGPACK_FILE = "flax_model.msgpack"


def resolve_dtype(dtype: Any, config: LlamaConfig) -> Any:
    """float32 by default; "auto" takes the checkpoint's torch_dtype; names or jnp dtypes otherwise."""
    return requested_dtype(dtype, config.torch_dtype)


@partial(jax.jit, static_argnames=("shape", "dtype", "std"))
def _normal(key: jax.Array, shape: tuple[int, ...], dtype: Any, std: float) -> jax.Array:
    return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)


@partial(jax.jit, static_argnames=("module", "static"))
def _apply(module: Any, params: Any, arrays: dict[str, Any], static: tuple[tuple[str, Any], ...]) -> Any:
    return module.apply({"params": params}, **arrays, **dict(static))


class FlaxPreTrainedModel(GenerationMixin):
    """A Linen module with its params: jitted calls, random init, Hugging Face folder I/O."""

    module_class: type = None  # set by each model class
    base_prefix = ""
    name_or_path: str | None = None  # the folder or repo id from_pretrained read

    def __init__(self, config: LlamaConfig, params: Any = None, dtype: Any = jnp.float32,
                 param_dtype: Any = None, seed: int = 0, scan_layers: bool = False):
        """params default to a random draw; scan_layers runs the decoder layers as one nn.scan over
        params stacked along a leading layer axis (llama_flax.scan converts trees between the layouts)."""
        self.config = config
        self.dtype = dtype
        self.param_dtype = param_dtype or dtype
        self.module = self.module_class(config, dtype, self.param_dtype, scan_layers=scan_layers)
        self.params = params if params is not None else self.init_params(jax.random.PRNGKey(seed))

    def init_params(self, rng: jax.Array) -> Any:
        """Random parameters (normal(0, initializer_range) weights, unit norms, zero biases), drawn one
        tensor at a time: compiling module.init whole takes over a minute for 32 layers on a GPU, while
        one small program per distinct shape compiles in seconds."""
        shapes = self.param_shapes()
        keys = jax.random.split(rng, len(shapes))
        return unflatten_tree({path: self._random_param(path, spec, key)
                               for (path, spec), key in zip(shapes.items(), keys)})

    @property
    def scan_layers(self) -> bool:
        return self.module.scan_layers

    def param_shapes(self, unrolled: bool = False) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
        """Flat {path: shape/dtype} of the params, without allocating them; unrolled=True gives the
        per-layer layout of checkpoints even for a model with scanned layers."""
        ids = jnp.zeros((1, 1), jnp.int32)
        module = self.module.clone(scan_layers=False) if unrolled else self.module
        shapes = jax.eval_shape(lambda key: module.init(key, ids)["params"], jax.random.PRNGKey(0))
        return flatten_tree(shapes)

    def __call__(self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                 params: Any = None, **kwargs: Any) -> Any:
        """Run the model under jax.jit; array arguments are traced, the rest are static."""
        if input_ids is not None:
            self.check_token_ids(input_ids)
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        static = []
        for name, value in kwargs.items():
            if value is None or isinstance(value, (bool, int, str)):
                static.append((name, value))
            else:
                arrays[name] = value
        arrays = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in arrays.items() if v is not None}
        return _apply(self.module, self.params if params is None else params, arrays, tuple(sorted(static)))

    @property
    def architecture(self) -> str:
        """The transformers class this model is (FlaxLlamaForCausalLM: LlamaForCausalLM), as checkpoints
        and config.json's architectures name it."""
        return type(self).__name__.removeprefix("Flax")

    def check_token_ids(self, input_ids: Any) -> None:
        """Raise if a token id is outside [0, vocab_size) (checked on the host before any jit)."""
        try:
            ids = np.asarray(input_ids)
        except jax.errors.TracerArrayConversionError:
            return
        if ids.size == 0:
            return
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary [0, {self.config.vocab_size})")

    # ------------------------------------------------------------------------------------------
    # Hugging Face folders

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, dtype: Any = None, param_dtype: Any = None,
                        config: LlamaConfig | None = None, quantization: str | QuantizationConfig | None = None,
                        group_size: int | None = None, scan_layers: bool = False, gguf_file: str | None = None,
                        adapter: str | os.PathLike | None = None, **config_overrides: Any) -> "FlaxPreTrainedModel":
        """Load a Hugging Face folder (config.json + safetensors, or flax_model.msgpack) or hub repo id;
        with gguf_file, that GGUF file in the folder or repo (config from its metadata, tensors
        dequantized to float32).

        dtype is the compute dtype and, unless param_dtype says otherwise, the params' dtype.
        quantization "int8" or "int4" (group_size 32, 64 or 128; default 128) quantizes the linear
        layers tensor by tensor as they load; a quantized checkpoint loads as it was saved.
        scan_layers=True stacks the layers' params as they load, for one nn.scan over the layers.
        adapter: a PEFT LoRA folder to put on the causal LM (load_adapter).
        """
        if scan_layers and quantization is not None:
            raise ValueError("scan_layers=True and quantization cannot be combined: quantized models run unrolled")
        directory, config, gguf = open_model_files(path_or_repo_id, gguf_file, config, config_overrides)
        dtype = resolve_dtype(dtype, config)
        has_safetensors = gguf is not None or any(os.path.exists(os.path.join(directory, f))
                                                  for f in (SINGLE_FILE, INDEX_FILE))
        from_msgpack = not has_safetensors and os.path.exists(os.path.join(directory, MSGPACK_FILE))
        if not from_msgpack:
            config, checkpoint = open_for_loading(gguf or Checkpoint(directory), config, quantization, group_size,
                                                  np.dtype(param_dtype or dtype))
        model = cls.without_params(config, dtype, param_dtype, scan_layers)
        if scan_layers and q.config_quantization(config) is not None:
            raise ValueError(f"{directory} holds a quantized checkpoint: quantized models run unrolled, "
                             f"not with scan_layers=True")
        if from_msgpack:
            model.params = model._params_from_msgpack(os.path.join(directory, MSGPACK_FILE))
            if quantization is not None:
                quantize(model, quantization, group_size)
        else:
            model.params = model.params_from_checkpoint(checkpoint)
        model.generation_config = GenerationConfig.for_model(directory, config)
        model.name_or_path = str(path_or_repo_id)
        if adapter is not None:
            if not hasattr(model, "load_adapter"):
                raise ConfigError(f"{cls.__name__} takes no adapter: LoRA adapters go on the causal LM")
            model.load_adapter(adapter)
        return model

    @classmethod
    def without_params(cls, config: LlamaConfig, dtype: Any, param_dtype: Any = None,
                       scan_layers: bool = False) -> "FlaxPreTrainedModel":
        """The model object with its module and config, params still to be set (loaders fill them)."""
        model = cls.__new__(cls)
        model.config, model.dtype, model.param_dtype = config, dtype, param_dtype or dtype
        model.module = cls.module_class(config, dtype, model.param_dtype, scan_layers=scan_layers)
        return model

    def params_from_checkpoint(self, checkpoint: Checkpoint, place: Callable[..., jax.Array] | None = None) -> Any:
        """The param tree from a checkpoint whose names, shapes and dtypes are first checked against
        the config (llama_shared.parameters, before anything is traced or allocated); missing task
        heads are initialised.

        place(path, spec, checkpoint, key, transposed) puts one stored tensor where it belongs (path in
        the unrolled layout); by default it is read whole onto the default device (llama_flax.parallel
        places blocks on a mesh). A model with scanned layers gets the layers' params stacked.
        """
        key_map = check_tensors(checkpoint_specs(checkpoint), self.config, self.architecture, checkpoint.directory)
        place = place or _read_whole
        shapes = self.param_shapes(unrolled=True)
        keys = {path: hf_key(path) for path in shapes}
        flat, fresh = {}, []
        sizes = (((path, spec), tensor_nbytes(checkpoint, key_map[keys[path][0]]) if key_map[keys[path][0]] else 0)
                 for path, spec in shapes.items())
        for path, spec in byte_progress(sizes, f"loading {checkpoint.directory}"):
            name, transposed = keys[path]
            source = key_map[name]
            if source is None:
                fresh.append(name)
                flat[path] = self._random_param(path, spec, jax.random.PRNGKey(len(fresh)))
                continue
            flat[path] = place(path, spec, checkpoint, source, transposed)
        if fresh:
            warnings.warn(f"{', '.join(fresh)} not in the checkpoint: newly initialised, train before use",
                          stacklevel=3)
        return self._in_layout(flat)

    def _in_layout(self, flat: dict[tuple[str, ...], Any]) -> Any:
        """A param tree from a flat unrolled {path: array}, stacked if the model scans its layers."""
        return unflatten_tree(stack_flat(flat) if self.scan_layers else flat)

    def _random_param(self, path: tuple[str, ...], spec: jax.ShapeDtypeStruct, key: jax.Array) -> jax.Array:
        """One parameter as the module's initialisers draw it: kernels and embeddings normal, RMSNorm
        weights one, biases zero."""
        if path[-1] in ("kernel", "embedding"):
            return _normal(key, spec.shape, spec.dtype, self.config.initializer_range)
        return (jnp.ones if path[-1] == "weight" else jnp.zeros)(spec.shape, spec.dtype)

    def _params_from_msgpack(self, path: str) -> Any:
        """transformers' flax_model.msgpack, checked against the config like a safetensors checkpoint."""
        with open_regular(path, CheckpointError) as f:
            try:
                state = serialization.msgpack_restore(f.read())
            except Exception as e:  # noqa: BLE001 - msgpack raises its own exception types
                raise CheckpointError(f"{path} is not a readable flax msgpack file: {e}") from None
        flat = {hf_key(p)[0]: (p, array) for p, array in flatten_tree(state).items()}
        stored = {name: (tuple(reversed(a.shape)) if hf_key(p)[1] else tuple(a.shape), np.dtype(a.dtype))
                  for name, (p, a) in flat.items()}
        key_map = check_tensors(stored, self.config, self.architecture, path)
        out = {}
        for target in self.param_shapes(unrolled=True):
            source = key_map[hf_key(target)[0]]
            if source is None:
                raise CheckpointError(f"parameter {'/'.join(target)} is missing from {path}")
            out[target] = jnp.asarray(flat[source][1], dtype=self.param_dtype)
        return self._in_layout(out)

    def save_pretrained(self, directory: str | os.PathLike, max_shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        """Write config.json and safetensors that transformers (and the torch twin) load unchanged
        (scanned layers are written per layer, one layer's slice at a time)."""
        if getattr(self, "adapter_config", None) is not None:
            raise ConfigError("the model carries a LoRA adapter: save_adapter(dir) writes the adapter, "
                              "merge_and_unload().save_pretrained(dir) the merged model")
        os.makedirs(directory, exist_ok=True)
        flat = unrolled_leaves(self.params)
        dtype = next(np.dtype(leaf.dtype) for leaf in jax.tree_util.tree_leaves(self.params)
                     if jnp.issubdtype(leaf.dtype, jnp.floating))
        dtype_name = "bfloat16" if dtype == ml_dtypes.bfloat16 else dtype.name
        self.config.replace(torch_dtype=dtype_name, architectures=[self.architecture]).save_pretrained(directory)
        entries = sorted((hf_key(path) + (path,) for path in flat), key=lambda e: hf_key_order(e[0]))
        shapes = {path: leaf.shape[1:] if index is not None else leaf.shape for path, (leaf, index) in flat.items()}
        specs = {name: ((tuple(reversed(shapes[path])) if transposed else tuple(shapes[path])),
                        np.dtype(flat[path][0].dtype)) for name, transposed, path in entries}
        tensors = ((name, _host(_layer(*flat[path]), transposed)) for name, transposed, path in entries)
        write_checkpoint(directory, specs, tensors, max_shard_size, checkpoint_metadata(self.config))
        if self.can_generate():
            self.generation_defaults().save_pretrained(directory)


def host_param(array: np.ndarray, dtype: Any, transposed: bool) -> np.ndarray:
    """The host side of a param from a tensor in memory of its own: cast by numpy (fast on a
    contiguous array) and, for a kernel, transposed as a view, which jax.device_put copies with XLA's
    blocked host transpose (cheaper than numpy's copy). On the CPU device_put adopts a 64-byte-aligned
    contiguous array instead of copying it: the array must never be a view of the mapped checkpoint."""
    array = array.astype(dtype, copy=False)
    return array.T if transposed else array


def _read_whole(path: tuple[str, ...], spec: jax.ShapeDtypeStruct, checkpoint: Checkpoint, key: str,
                transposed: bool) -> jax.Array:
    return jax.device_put(host_param(checkpoint.read(key), spec.dtype, transposed))


def _layer(array: jax.Array, index: int | None) -> jax.Array:
    return array if index is None else array[index]


def _host(array: jax.Array, transposed: bool) -> np.ndarray:
    host = np.asarray(jax.device_get(array))
    return layout.transposed(host) if transposed else host
