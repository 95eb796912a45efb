"""The twins sharded, for the command line: the torch twin over processes (spawned here, or started
by torchrun) and the Flax twin over jax's devices, each on a (data, fsdp, tensor) mesh.

One mesh spec serves both twins: -1 takes the rest of each one's world (the torch job's processes,
jax's devices). A world of one process (or one device) loads the plain model. Each twin (and its
framework) is imported by the functions that run it, so that a command running one twin never
waits for the other to import.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama_flax import FlaxLlamaForCausalLM
    from llama_torch import LlamaForCausalLM

DEFAULT_MESH = "1,1,-1"  # tensor parallel over every process / device


def add_sharding_arguments(parser: argparse.ArgumentParser) -> None:
    """--nproc, --mesh and --timeout of `parity` and `generate`."""
    parser.add_argument("--nproc", type=int, default=1,
                        help="run the torch twin sharded over N processes started here, one per GPU (gloo on "
                             "the CPU); under torchrun the launcher's processes are used instead (default: 1)")
    parser.add_argument("--mesh", default=DEFAULT_MESH, metavar="DATA,FSDP,TENSOR",
                        help="how a sharded twin is split: the torch twin over its processes, the Flax twin over "
                             f"jax's devices when there are several; -1 takes the rest (default: {DEFAULT_MESH}, "
                             "tensor parallel)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="how long a torch process waits for the others before failing (default: "
                             "llama_torch.parallel.DEFAULT_TIMEOUT_S, 600)")


def torch_parallel() -> ModuleType:
    """llama_torch.parallel, imported on first use: torch.distributed's tensor and FSDP modules take a
    second to import and need torch 2.6, which commands that shard nothing should not ask for."""
    from llama_torch import parallel

    return parallel


def parse_mesh(text: str) -> tuple[int, int, int]:
    """'1,-1,1' -> (1, -1, 1)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise SystemExit(f"--mesh {text!r}: expected three comma-separated sizes DATA,FSDP,TENSOR")
    return sizes


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or a launcher setting the same RANK and WORLD_SIZE) started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_rank() -> int:
    """This process's rank under torchrun; 0 otherwise (the process that spawns the job)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def torch_world_size(nproc: int) -> int:
    """The torch job's number of processes: torchrun's, or the nproc spawned here."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else nproc


def run_torch_job(command: str, fn: Callable[..., Any], nproc: int, *args: Any, timeout_s: float | None) -> bool:
    """fn(*args) on every rank of a torch job: this process's rank under torchrun, else nproc
    processes spawned here (timeout_s None: llama_torch.parallel's default). A rank whose fn fails on
    bad input prints `llama-twin COMMAND (rank R of N): message` on stderr; False when the job failed."""
    import torch
    import torch.multiprocessing

    parallel = torch_parallel()
    timeout_s = parallel.DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    if launched_by_torchrun():
        with parallel.distributed(timeout_s):
            try:
                _report_errors(command, fn, args)
            except SystemExit:
                return False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # rank 0 may run the Flax twin next, on the same GPUs
        return True
    try:
        parallel.spawn(_report_errors, nproc, command, fn, args, timeout_s=timeout_s)
    except (torch.multiprocessing.ProcessExitedException, torch.multiprocessing.ProcessRaisedException) as error:
        print(f"llama-twin {command}: the torch job of {nproc} processes failed: {str(error).strip().splitlines()[0]}",
              file=sys.stderr)
        return False
    return True


def _report_errors(command: str, fn: Callable[..., Any], args: tuple) -> None:
    import torch.distributed as dist

    try:
        fn(*args)
    except (ValueError, OSError) as error:  # bad input (LlamaTwinError is a ValueError), a missing file
        print(f"llama-twin {command} (rank {dist.get_rank()} of {dist.get_world_size()}): {error}", file=sys.stderr,
              flush=True)
        raise SystemExit(1) from None


def load_torch(model_dir: str, mesh_sizes: tuple[int, int, int], dtype: str) -> LlamaForCausalLM:
    """The torch twin on this rank: sharded over the job's mesh, or the plain model in a job of one."""
    import torch.distributed as dist

    from llama_torch import LlamaForCausalLM

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype)
    parallel = torch_parallel()
    return parallel.from_pretrained_sharded(LlamaForCausalLM, model_dir, parallel.make_mesh(*mesh_sizes), dtype=dtype)


def load_flax(model_dir: str, mesh_sizes: tuple[int, int, int], dtype: str) -> tuple[FlaxLlamaForCausalLM, Any]:
    """(model, mesh) of the Flax twin: sharded over jax's devices, or the plain model and None on one."""
    import jax

    from llama_flax import FlaxLlamaForCausalLM
    from llama_flax import parallel as flax_parallel

    if jax.device_count() == 1:
        return FlaxLlamaForCausalLM.from_pretrained(model_dir, dtype=dtype), None
    mesh = flax_parallel.make_mesh(*mesh_sizes)
    return flax_parallel.from_pretrained_sharded(FlaxLlamaForCausalLM, model_dir, mesh, dtype=dtype), mesh


def on_mesh(mesh: Any) -> contextlib.AbstractContextManager:
    """jax.set_mesh(mesh) for a Flax twin that load_flax sharded; nothing for a model off a mesh (None)."""
    if mesh is None:
        return contextlib.nullcontext()
    import jax

    return jax.set_mesh(mesh)
