"""The flax format: config.json + an Orbax checkpoint (params/) of the Flax parameter tree as
FlaxLlamaForCausalLM holds it (transformers' Flax paths, kernels [in, out]); transformers'
flax_model.msgpack is read too.

Reading restores one tensor at a time (Orbax partial restore). Orbax saves a whole tree at once,
so writing first streams each tensor, transposed where needed, into a scratch file and hands
Orbax a tree of memory-mapped views of it: the tensors live in the page cache, not the heap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from llama_shared.config import LlamaConfig
from llama_shared.convert import TensorSource, carried_files, write_side_files
from llama_shared.errors import CheckpointError
from llama_shared.naming import flatten_tree, flax_path, hf_key, hf_key_order, unflatten_tree

PARAMS_DIR = "params"
MSGPACK_FILE = "flax_model.msgpack"
_SCRATCH_FILE = ".tensors.scratch"
_ALIGNMENT = 64
# Orbax serialises at most this many GB at once (its default, 96, copies a small model whole), and
# without compression, which costs CPU time and saves nothing on weights.
SAVE_CONCURRENT_GB = 1


def is_flax_checkpoint(path: str) -> bool:
    """True for a folder with config.json and an Orbax params/ folder or flax_model.msgpack."""
    return os.path.exists(os.path.join(path, "config.json")) and (
        os.path.isdir(os.path.join(path, PARAMS_DIR)) or os.path.exists(os.path.join(path, MSGPACK_FILE)))


def flax_source(path: str | os.PathLike) -> TensorSource:
    """A flax-format folder as Hugging Face tensors (kernels transposed back to [out, in])."""
    path = os.fspath(path)
    config = LlamaConfig.from_json_file(os.path.join(path, "config.json"))
    if os.path.isdir(os.path.join(path, PARAMS_DIR)):
        shapes, read = _orbax_reader(os.path.abspath(os.path.join(path, PARAMS_DIR)))
    elif os.path.exists(os.path.join(path, MSGPACK_FILE)):
        shapes, read = _msgpack_reader(os.path.join(path, MSGPACK_FILE))
    else:
        raise CheckpointError(f"{path} has neither an Orbax {PARAMS_DIR}/ folder nor {MSGPACK_FILE}")
    entries = sorted(((*hf_key(p), p) for p in shapes), key=lambda e: hf_key_order(e[0]))
    specs = {name: ((tuple(reversed(shapes[p][0])) if transposed else shapes[p][0]), shapes[p][1])
             for name, transposed, p in entries}

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for name, transposed, p in entries:
            array = read(p)
            yield name, (np.ascontiguousarray(array.T) if transposed else array)

    return TensorSource(config, specs, tensors, carried_files(path))


def load_flax_params(path: str | os.PathLike) -> dict[str, Any]:
    """The whole parameter tree of a flax-format folder, as numpy arrays (for FlaxLlama*(config, params=...))."""
    source = flax_source(path)
    flat = {}
    for name, array in source.tensors():
        tree_path, transposed = flax_path(name)
        flat[tree_path] = np.ascontiguousarray(array.T) if transposed else array
    return unflatten_tree(flat)


def _orbax_reader(directory: str) -> tuple[dict, Any]:
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(directory)
    except Exception as e:  # noqa: BLE001 - Orbax raises several kinds for a missing or corrupt folder
        raise CheckpointError(f"{directory} is not a readable Orbax checkpoint: {e}") from None
    tree = getattr(metadata, "item_metadata", metadata)
    leaves = flatten_tree(getattr(tree, "tree", tree))
    shapes = {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in leaves.items()}

    def read(target: tuple[str, ...]) -> np.ndarray:
        item = unflatten_tree({p: (m if p == target else ocp.PLACEHOLDER) for p, m in leaves.items()})
        args = unflatten_tree({p: (ocp.RestoreArgs(restore_type=np.ndarray) if p == target else ocp.PLACEHOLDER)
                               for p in leaves})
        try:
            restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(item=item, restore_args=args))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"could not read {'/'.join(target)} from {directory}: {e}") from None
        return np.asarray(flatten_tree(restored)[target])

    return shapes, read


def _msgpack_reader(path: str) -> tuple[dict, Any]:
    """transformers' flax_model.msgpack; the format cannot be read lazily, so the file is read whole."""
    from flax import serialization

    with open(path, "rb") as f:
        try:
            flat = flatten_tree(serialization.msgpack_restore(f.read()))
        except Exception as e:  # noqa: BLE001 - msgpack raises its own exception types
            raise CheckpointError(f"{path} is not a readable flax msgpack file: {e}") from None
    shapes = {p: (tuple(a.shape), np.dtype(a.dtype)) for p, a in flat.items()}
    return shapes, lambda p: np.asarray(flat[p])


def write_flax(source: TensorSource, directory: str) -> None:
    """Write config.json, the Orbax params/ checkpoint and the carried files into directory."""
    import orbax.checkpoint as ocp

    scratch = os.path.join(directory, _SCRATCH_FILE)
    layout = {}
    with open(scratch, "wb") as f:
        for key, array in source.tensors():
            path, transposed = flax_path(key)
            data = np.ascontiguousarray(array.T if transposed else array)
            f.write(b"\0" * (-f.tell() % _ALIGNMENT))
            layout[path] = (f.tell(), data.shape, data.dtype)
            f.write(memoryview(data.reshape(-1).view(np.uint8)))
            del data
    mapped = np.memmap(scratch, np.uint8, "r") if os.path.getsize(scratch) else np.zeros(0, np.uint8)
    tree = unflatten_tree({p: mapped[o:o + int(np.prod(s, dtype=np.int64)) * d.itemsize].view(d).reshape(s)
                           for p, (o, s, d) in layout.items()})
    handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=SAVE_CONCURRENT_GB, use_compression=False)
    ocp.Checkpointer(handler).save(os.path.abspath(os.path.join(directory, PARAMS_DIR)), args=ocp.args.PyTreeSave(tree))
    del tree, mapped
    os.remove(scratch)
    source.config.replace(torch_dtype=source.dtype_name).save_pretrained(directory)
    write_side_files(source, directory)
