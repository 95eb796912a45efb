"""Running the Flax twin across devices and hosts: a (data, fsdp, tensor) mesh, sharded loading,
jit with shardings, pmap and multi-host start-up. The rules that say which axis goes where are in
llama_flax.sharding.

Meshes are built with AxisType.Auto axes (jax.make_mesh defaults to Explicit since jax 0.9, which
Linen's sharding-propagation style does not use) and entered with jax.set_mesh, never `with mesh:`.

pmap, as of jax 0.9 and newer: jax.pmap is jit(shard_map) underneath and in maintenance mode. The
mapped function still sees per-device arrays without the device axis, but the result is a single
jax.Array sharded over a one-axis mesh whose shards keep a leading axis of 1
(`out.addressable_shards[0].data.shape == (1, ...)`: "no rank reduction"); device_put_replicated
and PmapSharding are gone (0.10). Arguments mapped with in_axes=None are broadcast, which is how
params and the train state travel here. jit with NamedSharding is the main path; pmap is the
data-parallel convenience, tested equal to it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from llama_flax.loading import MSGPACK_FILE, FlaxPreTrainedModel, host_param, resolve_dtype
from llama_flax.sharding import MESH_AXES, batch_sharding, fit_spec, param_shardings
from llama_shared.checkpoints import INDEX_FILE, SINGLE_FILE, Checkpoint, resolve_model_dir
from llama_shared.config import LlamaConfig
from llama_shared.naming import flatten_tree, unflatten_tree

DATA_AXIS_NAME = "data"  # the pmap axis


# ------------------------------------------------------------------------------------------------
# Meshes and placement


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices (of every host); one size may be -1: the rest."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes (data, fsdp, tensor) = {tuple(sizes)}: each must be positive, one may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot fill a mesh of {tuple(sizes)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh (data, fsdp, tensor) = {tuple(sizes)} needs {math.prod(sizes)} devices, "
                         f"there are {len(devices)}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def shard_params(params: Any, mesh: Mesh) -> Any:
    """Place params already in memory onto the mesh (for random init; loading uses from_pretrained_sharded)."""
    return jax.device_put(params, param_shardings(params, mesh))


def shard_batch(mesh: Mesh, array: Any) -> jax.Array:
    """A host batch as a global array split over data and fsdp (each host passes the same global batch)."""
    sharding = batch_sharding(mesh, np.shape(array))
    if isinstance(array, jax.Array) and array.sharding == sharding:
        return array
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


# ------------------------------------------------------------------------------------------------
# Sharded loading


def from_pretrained_sharded(model_class: type[FlaxPreTrainedModel], path_or_repo_id: str | os.PathLike, mesh: Mesh,
                            dtype: Any = None, param_dtype: Any = None, config: LlamaConfig | None = None,
                            scan_layers: bool = False, **config_overrides: Any) -> FlaxPreTrainedModel:
    """model_class.from_pretrained with every tensor read straight onto its shards.

    Each device's block is sliced from the memory-mapped safetensors file and converted on the
    host, so no device (and no host) ever holds a full copy; on several hosts each reads only the
    blocks of its own devices. Old flax_model.msgpack folders cannot be read by block: they load
    whole and are then sharded. With scan_layers the layers' blocks are stacked on the devices
    (each device stacks its own blocks) and placed by the rule table's "layers" axis.
    """
    directory = resolve_model_dir(path_or_repo_id)
    if not any(os.path.exists(os.path.join(directory, f)) for f in (SINGLE_FILE, INDEX_FILE)):
        if os.path.exists(os.path.join(directory, MSGPACK_FILE)):
            model = model_class.from_pretrained(directory, dtype, param_dtype, config, scan_layers=scan_layers,
                                                **config_overrides)
            model.params = shard_params(model.params, mesh)
            return model
    config = config or LlamaConfig.from_pretrained(directory, **config_overrides)
    model = model_class.without_params(config, resolve_dtype(dtype, config), param_dtype, scan_layers)
    shardings = flatten_tree(param_shardings(unflatten_tree(model.param_shapes(unrolled=True)), mesh))

    def place_blocks(path: tuple[str, ...], spec: jax.ShapeDtypeStruct, checkpoint: Checkpoint, key: str,
                     transposed: bool) -> jax.Array:
        """Each device's block sliced from the memory-mapped tensor, converted on the host."""
        stored, target = checkpoint.get(key), np.dtype(spec.dtype)

        def read(index: tuple) -> np.ndarray:
            block = np.array(stored[tuple(reversed(index)) if transposed else index], dtype=target)
            return host_param(block, target, transposed)  # a copy: device_put may adopt it

        return jax.make_array_from_callback(spec.shape, shardings[path], read)

    # Task heads missing from the checkpoint come back unsharded, and stacks as jnp.stack placed them;
    # shard_params places both by the rule table.
    model.params = shard_params(model.params_from_checkpoint(Checkpoint(directory), place_blocks), mesh)
    return model


# ------------------------------------------------------------------------------------------------
# jit with shardings, and pmap


def jit_forward(model: FlaxPreTrainedModel, mesh: Mesh) -> Callable[..., jax.Array]:
    """(params, input_ids, attention_mask=None) -> logits, jitted on the mesh: the batch over data and
    fsdp, params as param_shardings places them, the logits' vocabulary over tensor."""
    shardings = param_shardings(model.params, mesh)

    def forward(params: Any, input_ids: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
        return model.module.apply({"params": params}, input_ids, attention_mask).logits

    def compile_for(shape: tuple[int, ...], masked: bool) -> Callable:
        ids = batch_sharding(mesh, shape)
        logits = NamedSharding(mesh, fit_spec(("batch", "length", "vocab"), (*shape, model.config.vocab_size),
                                              mesh.shape))
        return jax.jit(forward, in_shardings=(shardings, ids, ids if masked else None), out_shardings=logits)

    compiled: dict[tuple, Callable] = {}

    def call(params: Any, input_ids: Any, attention_mask: Any = None) -> jax.Array:
        key = (np.shape(input_ids), attention_mask is not None)
        if key not in compiled:
            compiled[key] = compile_for(*key)
        if attention_mask is not None:
            attention_mask = shard_batch(mesh, attention_mask)
        with jax.set_mesh(mesh):
            return compiled[key](params, shard_batch(mesh, input_ids), attention_mask)

    return call


def jit_train_step(step: Callable, mesh: Mesh, state_shardings: Any, frozen_shardings: Any = None) -> Callable:
    """step(state, batch, frozen) -> (state, metrics) jitted on the mesh; the state is donated and keeps
    its shardings, the batch (a dict of batch-first arrays) is split over data and fsdp, the frozen
    params (a LoRA adapter's base; {} for none) keep theirs and are never donated."""
    replicated = NamedSharding(mesh, P())
    compiled: dict[tuple, Callable] = {}

    def call(state: Any, batch: Mapping[str, Any], frozen: Any = None) -> tuple[Any, dict]:
        key = tuple(sorted((name, np.shape(value)) for name, value in batch.items()))
        if key not in compiled:
            batch_shardings = {name: batch_sharding(mesh, shape) for name, shape in key}
            compiled[key] = jax.jit(step, in_shardings=(state_shardings, batch_shardings, frozen_shardings or {}),
                                    out_shardings=(state_shardings, replicated), donate_argnums=0)
        with jax.set_mesh(mesh):
            return compiled[key](state, {name: shard_batch(mesh, value) for name, value in batch.items()},
                                 frozen or {})

    return call


def generate(model: FlaxPreTrainedModel, mesh: Mesh, input_ids: Any, attention_mask: Any = None,
             **generate_kwargs: Any) -> jax.Array:
    """model.generate on the mesh: with params from from_pretrained_sharded (or shard_params), the
    jitted decode loop inherits their shardings and splits the batch, activations and KV cache over
    the mesh by the logical-axis rules."""
    with jax.set_mesh(mesh):
        return model.generate(input_ids, attention_mask, **generate_kwargs)


def pmap_forward(model: FlaxPreTrainedModel) -> Callable[..., jax.Array]:
    """(params, input_ids (devices, batch, seq), attention_mask=None) -> logits (devices, batch, seq, vocab).

    Data parallel with pmap: params are broadcast (in_axes=None), each device runs its slice. The
    mask may be left out (pmap itself takes no default arguments, so it is passed as None).
    """
    def forward(params: Any, input_ids: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
        return model.module.apply({"params": params}, input_ids, attention_mask).logits

    mapped = jax.pmap(forward, axis_name=DATA_AXIS_NAME, in_axes=(None, 0, 0))

    def run(params: Any, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        return mapped(params, input_ids, attention_mask)

    return run


def pmap_train_step(step: Callable) -> Callable:
    """step(state, batch, frozen) -> (state, metrics) under pmap; build step with axis_name=DATA_AXIS_NAME
    so gradients are summed over devices. The state and the frozen params are broadcast in and the
    state comes out identical on every device (out_axes=None); each batch array is (devices,
    per-device batch, ...)."""
    return jax.pmap(step, axis_name=DATA_AXIS_NAME, in_axes=(None, 0, None), out_axes=(None, None))


def split_for_pmap(array: Any, devices: int) -> np.ndarray:
    """(batch, ...) -> (devices, batch / devices, ...): the pmap layout of a global batch."""
    array = np.asarray(array)
    if array.shape[0] % devices:
        raise ValueError(f"a batch of {array.shape[0]} rows does not split over {devices} devices")
    return array.reshape(devices, array.shape[0] // devices, *array.shape[1:])


# ------------------------------------------------------------------------------------------------
# Multi-host


def initialize_distributed() -> int:
    """Start jax.distributed for a multi-host job and return the number of processes.

    With JAX_COORDINATOR_ADDRESS set (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID give the job's size and this process's rank; without it jax detects the
    cluster itself (Cloud TPU pods, SLURM, Open MPI, Kubernetes). Call it before anything else
    touches jax's devices.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [name for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not os.environ.get(name)]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} is not")
        jax.distributed.initialize(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    return jax.process_count()
