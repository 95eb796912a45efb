"""Running the torch twin across devices and hosts with torch.distributed: a (data, fsdp, tensor)
DeviceMesh, sharded loading and saving, generate, one training step, and start-up (torchrun's
environment, or spawn for N processes on this machine). The rules that say which module is split
how are in llama_torch.sharding.

One process per device: NCCL on GPUs, gloo on the CPU. Every collective runs under the process
group's timeout, so a rank that fails or never arrives becomes an error on the others rather than a
hang; where one rank alone can fail (its launch settings, its copy of the checkpoint) the ranks
compare outcomes first and every rank raises the same error, naming the rank at fault.
Needs torch 2.6 or newer (fully_shard and DTensor as public APIs).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from llama_shared.checkpoints import DEFAULT_SHARD_SIZE, Checkpoint, resolve_model_dir
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError
from llama_shared.generation import GenerationConfig
from llama_shared.heads import IGNORE_INDEX
from llama_shared.quantization import config_quantization, open_for_loading
from llama_torch.loading import PreTrainedModel, resolve_dtype
from llama_torch.sharding import MESH_AXES, apply_fsdp, apply_tensor_parallel, check_tensor_parallel
from llama_torch.tensors import to_numpy, to_torch

DEFAULT_TIMEOUT_S = 600.0  # a collective that waits longer fails; loading a 70B shard fits well inside
SPAWN_GRACE_S = 5.0  # after one spawned process fails, how long the others may take to report theirs


# ------------------------------------------------------------------------------------------------
# Meshes and placement


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1) -> DeviceMesh:
    """A (data, fsdp, tensor) mesh over every process of the job; one size may be -1: the rest.

    The ranks first compare the sizes they were given, so a job launched with different settings on
    different ranks fails on every rank instead of waiting in a collective.
    """
    world = dist.get_world_size()
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes (data, fsdp, tensor) = {tuple(sizes)}: each must be positive, one may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if world % known:
            raise ValueError(f"{world} processes cannot fill a mesh of {tuple(sizes)}")
        sizes[sizes.index(-1)] = world // known
    if math.prod(sizes) != world:
        raise ValueError(f"mesh (data, fsdp, tensor) = {tuple(sizes)} needs {math.prod(sizes)} processes, "
                         f"the job has {world}")
    check_same_settings({"mesh (data, fsdp, tensor)": tuple(sizes)})
    return init_device_mesh(local_device().type, tuple(sizes), mesh_dim_names=MESH_AXES)


def local_device() -> torch.device:
    """This process's device: its GPU under NCCL (LOCAL_RANK), else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_model(model: PreTrainedModel, mesh: DeviceMesh) -> PreTrainedModel:
    """Split a model (on the meta device or in memory) over the mesh, in place: tensor parallelism
    over "tensor", FSDP2 over "fsdp" and, replicated, "data" (HSDP). An axis of size 1 adds nothing,
    so a one-process mesh leaves the plain model."""
    if mesh["tensor"].size() > 1:
        apply_tensor_parallel(model, mesh["tensor"])
    if mesh["data"].size() > 1:
        apply_fsdp(model, mesh["data", "fsdp"])
    elif mesh["fsdp"].size() > 1:
        apply_fsdp(model, mesh["fsdp"])
    return model


def shard_batch(mesh: DeviceMesh, array: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch (every rank passes the same one): split over data and fsdp;
    the ranks along tensor take the same rows."""
    data, fsdp, _ = mesh.get_coordinate()
    parts = mesh["data"].size() * mesh["fsdp"].size()
    if array.shape[0] % parts:
        raise ValueError(f"a batch of {array.shape[0]} rows does not split over {parts} data-parallel ranks")
    rows = array.shape[0] // parts
    index = data * mesh["fsdp"].size() + fsdp
    return array[index * rows:(index + 1) * rows]


# ------------------------------------------------------------------------------------------------
# Sharded loading and saving


def from_pretrained_sharded(model_class: type[PreTrainedModel], path_or_repo_id: str | os.PathLike, mesh: DeviceMesh,
                            dtype: torch.dtype | str | None = None, config: LlamaConfig | None = None,
                            **config_overrides: Any) -> PreTrainedModel:
    """model_class.from_pretrained with the model split over the mesh as it loads.

    The model is built on the meta device and sharded (shard_model); each rank then allocates only
    its shards and copies its block of each tensor out of the memory-mapped safetensors files,
    dropping the mapped pages behind it, so no rank ever holds the whole model. A rank that cannot
    open or read its copy of the checkpoint makes every rank raise.
    """
    directory = resolve_model_dir(path_or_repo_id)

    def open_checkpoint() -> tuple[LlamaConfig, Checkpoint, torch.dtype]:
        opened = config or LlamaConfig.from_pretrained(directory, **config_overrides)
        opened, checkpoint = open_for_loading(Checkpoint(directory), opened, None, None, np.dtype("float32"))
        if config_quantization(opened) is not None:
            raise CheckpointError(f"{directory} holds a quantized checkpoint, which loads on one process only "
                                  f"(from_pretrained)")
        if mesh["tensor"].size() > 1:
            check_tensor_parallel(opened, mesh["tensor"].size())
        return opened, checkpoint, resolve_dtype(dtype, opened)

    config, checkpoint, target = agreed("opening the checkpoint", open_checkpoint)
    check_same_settings({"model class": model_class.__name__, "dtype": str(target), "config": config.to_dict()})
    with torch.device("meta"):
        model = model_class(config)
    shard_model(model.to(target), mesh)
    model.to_empty(device=local_device())
    model.tie_weights()
    fresh = agreed("loading the checkpoint", lambda: model.load_checkpoint(checkpoint, place_block,
                                                                          dist.get_rank() == 0))
    with torch.no_grad():
        for name in fresh:  # each rank drew its own values for a new task head: take rank 0's
            param = model.get_parameter(name)
            whole = param.full_tensor() if isinstance(param, DTensor) else param.detach().clone()
            dist.broadcast(whole, src=0)
            local, index = local_block(param)
            local.copy_(whole[index])
    model.generation_config = GenerationConfig.for_model(directory, config)
    return model.eval()


def place_block(param: torch.Tensor, checkpoint: Checkpoint, key: str) -> None:
    """Copy this rank's block of a stored tensor into a parameter, then drop the tensor's mapped pages."""
    local, index = local_block(param)
    if local.numel():
        local.copy_(to_torch(checkpoint.get(key)[index]))
    checkpoint.release(key)


def local_block(param: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """(what this rank holds of a parameter, where that sits in the whole): a DTensor's local shard and
    its slices, or a parameter held whole."""
    if not isinstance(param, DTensor):
        return param, ()
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return param.to_local(), tuple(slice(start, start + size) for start, size in zip(offset, shape))


def save_pretrained_sharded(model: PreTrainedModel, directory: str | os.PathLike,
                            max_shard_size: int = DEFAULT_SHARD_SIZE) -> None:
    """model.save_pretrained for a sharded model: every rank calls it, each tensor is gathered in
    turn and rank 0 writes one Hugging Face folder, holding one whole tensor at a time."""
    state = model.state_to_save()
    specs = {name: (tuple(value.shape), to_numpy(torch.empty(0, dtype=value.dtype)).dtype)
             for name, value in state.items()}
    tensors = ((name, to_numpy(value.full_tensor() if isinstance(value, DTensor) else value))
               for name, value in state.items())
    if dist.get_rank() == 0:
        model.write_pretrained(directory, specs, tensors, max_shard_size)
    else:
        for _ in tensors:  # the gathers are collectives: every rank takes part in each
            pass
    dist.barrier()


# ------------------------------------------------------------------------------------------------
# Runners


def train_step(model: PreTrainedModel, optimizer: torch.optim.Optimizer, mesh: DeviceMesh,
               batch: Mapping[str, torch.Tensor]) -> float:
    """One optimizer step of a causal LM on a global batch (every rank passes the same one); returns
    the loss.

    batch holds input_ids and optionally labels (default: input_ids, padding ignored) and
    attention_mask. Each data-parallel rank runs its rows (shard_batch); the loss is the mean over the
    target tokens of the whole batch, weighted by token, so the update equals one process's on the
    whole batch. FSDP2 averages gradients over the data-parallel ranks; the loss is scaled to undo it.
    """
    device = local_device()
    ids = shard_batch(mesh, batch["input_ids"]).to(device)
    mask = batch.get("attention_mask")
    mask = None if mask is None else shard_batch(mesh, mask).to(device)
    if "labels" in batch:
        labels = shard_batch(mesh, batch["labels"]).to(device)
    else:
        labels = ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)
    count = (labels[:, 1:] != IGNORE_INDEX).sum()
    total = count.clone()
    dist.all_reduce(total)  # ranks along tensor share rows: the world's sum counts each row tensor times
    tensor_size, data_parallel = mesh["tensor"].size(), mesh["data"].size() * mesh["fsdp"].size()
    total = total // tensor_size
    model.train()
    out = model(ids, attention_mask=mask, labels=labels)
    token_loss_sum = out.loss * count if count else out.logits.sum() * 0.0
    (token_loss_sum * data_parallel / total.clamp(min=1)).backward()
    optimizer.step()
    optimizer.zero_grad()
    loss = token_loss_sum.detach().clone()
    dist.all_reduce(loss)
    return float(loss / tensor_size / total.clamp(min=1))


def generate(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             **generate_kwargs: Any) -> torch.Tensor:
    """model.generate on every rank of a sharded model, which must all pass the same prompts.

    Sampling without a seed uses one that rank 0 draws for all (ranks with different draws would
    part ways); a streamer is fed on rank 0 only. A tensor-parallel model runs eagerly unless
    compile=True is passed (torch.compile over DTensors and collectives is not yet measured here).
    """
    if generate_kwargs.get("seed") is None:
        seed = [random.randrange(2**31)]
        dist.broadcast_object_list(seed, src=0)
        generate_kwargs["seed"] = seed[0]
    if dist.get_rank() != 0:
        generate_kwargs["streamer"] = None
    if any(isinstance(p, DTensor) for p in model.parameters()):
        generate_kwargs.setdefault("compile", False)
    return model.generate(input_ids, attention_mask, **generate_kwargs)


# ------------------------------------------------------------------------------------------------
# Agreement between ranks


def agreed(step: str, fn: Callable[[], Any]) -> Any:
    """fn() on every rank, then the ranks compare outcomes: if fn raised on any, every rank raises the
    first failing rank's error (its class, its message, the rank named), so none waits for the others."""
    result, failure, cause = None, None, None
    try:
        result = fn()
    except Exception as error:  # noqa: BLE001 - any failure must reach the other ranks
        failure, cause = (type(error), str(error)), error
    failures: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(failures, failure)
    failed = [rank for rank, item in enumerate(failures) if item is not None]
    if not failed:
        return result
    error_class, message = failures[failed[0]]
    if all(item == failures[0] for item in failures):
        text = f"{step}, on every rank: {message}"
    else:
        others = f" (ranks {', '.join(map(str, failed))} failed)" if len(failed) > 1 else ""
        text = f"rank {failed[0]} of {len(failures)}, {step}: {message}{others}"
    try:
        error = error_class(text)
    except TypeError:
        error = RuntimeError(text)
    raise error from cause


def check_same_settings(settings: Mapping[str, Any]) -> None:
    """Raise ValueError on every rank unless every rank passes equal settings (launch arguments, mesh
    sizes, the model's config): ranks that disagree would otherwise wait in a collective or compute
    different things."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(settings))
    for rank, other in enumerate(gathered):
        for name in sorted(set(gathered[0]) | set(other)):
            if gathered[0].get(name) != other.get(name):
                raise ValueError(f"the ranks were launched with different settings: {name} is "
                                 f"{_brief(gathered[0].get(name))} on rank 0 but {_brief(other.get(name))} on "
                                 f"rank {rank}; start every rank with the same arguments")


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# ------------------------------------------------------------------------------------------------
# Start-up


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any, timeout_s: float = DEFAULT_TIMEOUT_S,
          backend: str | None = None) -> None:
    """Run fn(*args) in nprocs new processes on this machine, joined in one process group as torchrun
    would join them (a free local port; one GPU each under NCCL, the CPU cores shared under gloo;
    backend as initialize_distributed's).
    If one process fails, the others get a few seconds to report their own errors before they are
    stopped, and the failure is raised here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = torch.multiprocessing.start_processes(_run_rank, args=(nprocs, port, timeout_s, backend, fn, args),
                                                    nprocs=nprocs, join=False, start_method="spawn")
    while not context.join(grace_period=SPAWN_GRACE_S):
        pass


def _run_rank(rank: int, world: int, port: int, timeout_s: float, backend: str | None, fn: Callable[..., Any],
              args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    initialize_distributed(timeout_s, backend)
    if dist.get_backend() == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[int]:
    """initialize_distributed, then destroy the process group on the way out; yields the world size."""
    world = initialize_distributed(timeout_s)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def initialize_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> int:
    """Join the job torchrun (or spawn) started and return its number of processes.

    RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from the launcher. backend None means NCCL
    where there are GPUs (each process takes the one numbered LOCAL_RANK), else gloo; "gloo" keeps
    the job on the CPU. Collectives (and the wait for every rank to arrive) fail after timeout_s.
    """
    if dist.is_initialized():
        return dist.get_world_size()
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: start the job with torchrun (or llama_torch.parallel.spawn)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank {rank} is local rank {local_rank} but this machine has "
                             f"{torch.cuda.device_count()} GPUs: start at most one process per GPU")
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, dist.DistError) as error:
        raise RuntimeError(f"rank {rank} of {world}: the job's {world} processes did not all join at "
                           f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:g} s "
                           f"(was every process started with the same WORLD_SIZE and MASTER_PORT?): {error}") from error
    return world
