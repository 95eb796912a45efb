"""The flax format: config.json + an Orbax checkpoint (params/) of the Flax parameter tree as
FlaxLlamaForCausalLM holds it (transformers' Flax paths, kernels [in, out]); transformers'
flax_model.msgpack is read too.

Writing streams the tree into one checkpoint with Orbax v1's partial saves (ocp.v1.partial.save_async
of one group of tensors after another, then ocp.v1.partial.finalize), so only the group being written
and the one being read are in memory; the result is an ordinary Orbax checkpoint whose PyTree is the
whole parameter tree (ocp.v1.load(folder/params)). Reading restores one group at a time (Orbax
partial restore).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import serialization
from orbax.checkpoint.experimental import v1 as ocp_v1

from llama_shared.checkpoints.pagecache import drop_cached_files
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConversionError, LlamaTwinError
from llama_shared.files import open_regular
from llama_shared.layout import transposed
from llama_shared.naming import flatten_tree, flax_path, hf_key, hf_key_order, unflatten_tree
from llama_twin.conversion.formats.base import Format, WriteOptions
from llama_twin.conversion.source import TensorSource, carried_files, read_ahead, write_side_files

PARAMS_DIR = "params"
# Orbax's name for the PyTree inside a checkpoint written by its v1 API (partial saves); a params/
# folder written by one v0 PyTreeCheckpointer save holds the PyTree directly.
PYTREE_ITEM = "state"
MSGPACK_FILE = "flax_model.msgpack"
# Tensors are saved and restored in groups of about this many bytes: one Orbax call per group
# amortises its fixed cost per call, and one group is all that is held in memory.
GROUP_BYTES = 256 * 2**20
T = TypeVar("T")


def is_flax_checkpoint(path: str) -> bool:
    """True for a folder with config.json and an Orbax params/ folder or flax_model.msgpack."""
    return os.path.exists(os.path.join(path, "config.json")) and (
        os.path.isdir(os.path.join(path, PARAMS_DIR)) or os.path.exists(os.path.join(path, MSGPACK_FILE)))


def flax_source(path: str | os.PathLike) -> TensorSource:
    """A flax-format folder as Hugging Face tensors (kernels transposed back to [out, in])."""
    path = os.fspath(path)
    config = LlamaConfig.from_json_file(os.path.join(path, "config.json"))
    if os.path.isdir(os.path.join(path, PARAMS_DIR)):
        shapes, read = _orbax_reader(_pytree_directory(os.path.abspath(os.path.join(path, PARAMS_DIR))))
    elif os.path.exists(os.path.join(path, MSGPACK_FILE)):
        shapes, read = _msgpack_reader(os.path.join(path, MSGPACK_FILE))
    else:
        raise CheckpointError(f"{path} has neither an Orbax {PARAMS_DIR}/ folder nor {MSGPACK_FILE}")
    entries = sorted(((*hf_key(p), p) for p in shapes), key=lambda e: hf_key_order(e[0]))
    specs = {name: ((tuple(reversed(shapes[p][0])) if is_transposed else shapes[p][0]), shapes[p][1])
             for name, is_transposed, p in entries}

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for group in _groups(entries, lambda e: _nbytes(*shapes[e[2]]), GROUP_BYTES):
            arrays = read([p for _, _, p in group])
            for name, is_transposed, p in group:
                array = arrays.pop(p)
                yield name, (transposed(array) if is_transposed else array)

    return TensorSource(config, specs, tensors, carried_files(path))


def load_flax_params(path: str | os.PathLike) -> dict[str, Any]:
    """The whole parameter tree of a flax-format folder, as numpy arrays (for FlaxLlama*(config, params=...))."""
    source = flax_source(path)
    flat = {}
    for name, array in source.tensors():
        tree_path, is_transposed = flax_path(name)
        flat[tree_path] = transposed(array) if is_transposed else array
    return unflatten_tree(flat)


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _groups(items: Iterable[T], nbytes: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """Consecutive runs of items of about limit bytes in all (an item larger than limit alone)."""
    group: list[T] = []
    size = 0
    for item in items:
        if group and size + nbytes(item) > limit:
            yield group
            group, size = [], 0
        group.append(item)
        size += nbytes(item)
    if group:
        yield group


def _pytree_directory(params: str) -> str:
    """The folder of the PyTree in params/: Orbax v1's state/ item, or params/ itself (a v0 save)."""
    item = os.path.join(params, PYTREE_ITEM)
    return item if os.path.isdir(item) else params


def _orbax_reader(directory: str) -> tuple[dict, Any]:
    # The handler itself, not a Checkpointer: a Checkpointer looks for step metadata that the PyTree
    # item of a v1 checkpoint does not have (and warns), and adds nothing to a read.
    handler, folder = ocp.PyTreeCheckpointHandler(), epath.Path(directory)
    try:
        metadata = handler.metadata(folder)
    except Exception as e:  # noqa: BLE001 - Orbax raises several kinds for a missing or corrupt folder
        raise CheckpointError(f"{directory} is not a readable Orbax checkpoint: {e}") from None
    leaves = flatten_tree(getattr(metadata, "tree", metadata))
    shapes = {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in leaves.items()}

    def read(targets: list[tuple[str, ...]]) -> dict[tuple[str, ...], np.ndarray]:
        wanted = set(targets)
        item = unflatten_tree({p: (m if p in wanted else ocp.PLACEHOLDER) for p, m in leaves.items()})
        args = unflatten_tree({p: (ocp.RestoreArgs(restore_type=np.ndarray) if p in wanted else ocp.PLACEHOLDER)
                               for p in leaves})
        try:
            restored = handler.restore(folder, args=ocp.args.PyTreeRestore(item=item, restore_args=args))
        except Exception as e:  # noqa: BLE001
            names = ", ".join("/".join(p) for p in targets)
            raise CheckpointError(f"could not read {names} from {directory}: {e}") from None
        flat = flatten_tree(restored)
        drop_cached_files(directory)  # a single pass: read pages are not needed again
        return {p: np.asarray(flat[p]) for p in targets}

    return shapes, read


def _msgpack_reader(path: str) -> tuple[dict, Any]:
    """transformers' flax_model.msgpack; the format cannot be read lazily, so the file is read whole."""
    with open_regular(path, CheckpointError) as f:
        try:
            flat = flatten_tree(serialization.msgpack_restore(f.read()))
        except Exception as e:  # noqa: BLE001 - msgpack raises its own exception types
            raise CheckpointError(f"{path} is not a readable flax msgpack file: {e}") from None
    shapes = {p: (tuple(a.shape), np.dtype(a.dtype)) for p, a in flat.items()}
    return shapes, lambda targets: {p: np.asarray(flat[p]) for p in targets}


def write_flax(source: TensorSource, directory: str, options: WriteOptions) -> None:
    """Write config.json, the Orbax params/ checkpoint and the carried files into directory."""
    params = os.path.abspath(os.path.join(directory, PARAMS_DIR))
    # Kernels are transposed in a thread of their own, overlapping Orbax's writing.
    flax_tensors = read_ahead(lambda: _flax_layout(source.tensors()))
    context = ocp_v1.Context()
    context.array.saving.use_compression = False  # costs CPU time and saves nothing on weights
    context.memory.deepcopy_host_arrays = False  # nothing modifies a group while it is saved
    with context:
        try:
            _save_groups(params, _groups(flax_tensors, lambda t: t[1].nbytes, GROUP_BYTES))
            ocp_v1.partial.finalize(params)
        except LlamaTwinError:
            raise
        except (ValueError, RuntimeError) as e:  # how Orbax and TensorStore report a failed write (a full disk)
            raise ConversionError(f"could not write the Orbax checkpoint {params}: {e}") from None
    source.config.replace(torch_dtype=source.dtype_name).save_pretrained(directory)
    write_side_files(source, directory)


def _save_groups(params: str, groups: Iterable[list[tuple[tuple[str, ...], np.ndarray]]]) -> None:
    """Partial-save each group of (tree path, array) while the next group is read: one save in
    flight at a time (two partial saves of one checkpoint at once conflict), each dropped from the
    page cache once written. On an error the save in flight finishes first, so that the caller can
    remove the folder; the first error is raised."""
    saving = None
    try:
        for group in groups:
            if saving is not None:
                saving.result()
                drop_cached_files(params)  # Orbax has synced the group: its pages are clean
            saving = ocp_v1.partial.save_async(params, unflatten_tree(dict(group)))
    except BaseException:
        if saving is not None:
            with contextlib.suppress(Exception):
                saving.result()
        raise
    if saving is not None:
        saving.result()


def _flax_layout(tensors: Iterator[tuple[str, np.ndarray]]) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Hugging Face tensors as (Flax tree path, array), kernels transposed to [in, out]."""
    for key, array in tensors:
        path, is_transposed = flax_path(key)
        yield path, (transposed(array) if is_transposed else array)


FORMAT = Format("flax", f"config.json with an Orbax {PARAMS_DIR}/ folder or {MSGPACK_FILE}", is_flax_checkpoint,
                flax_source, write_flax)
