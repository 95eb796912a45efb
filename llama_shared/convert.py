"""Checkpoint conversion between Hugging Face, Flax (Orbax) and Meta's original layout.

Every format is read as a TensorSource, the config plus the tensors under Hugging Face names
produced one at a time, and every writer consumes one, so a conversion holds a few tensors (one
read ahead while the last is written), never the model.
Output goes into a temporary folder beside the destination that is renamed into place only when
complete: a failed conversion leaves no partial destination, and the source is only ever read.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import ml_dtypes
import numpy as np

from llama_shared.checkpoint import (DEFAULT_SHARD_SIZE, INDEX_FILE, SINGLE_FILE, Checkpoint, dtype_from_name,
                                     write_checkpoint)
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError
from llama_shared.naming import hf_key_order, is_ignored_key

FORMATS = ("hf", "flax", "meta")
# Files beside the weights that a converted checkpoint keeps (those the target format can use).
CARRIED_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "chat_template.jinja", "generation_config.json")
FLOAT_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16))

Specs = dict[str, tuple[tuple[int, ...], np.dtype]]
T = TypeVar("T")


@dataclass
class TensorSource:
    """A checkpoint read as Hugging Face tensors: ``tensors()`` yields (key, array) one at a time, in
    the order of ``specs`` ({key: (shape, dtype)}). ``files`` maps a name to a file carried along,
    ``json_files`` a name to JSON content written beside the weights (a generated generation_config)."""

    config: LlamaConfig
    specs: Specs
    tensors: Callable[[], Iterator[tuple[str, np.ndarray]]]
    files: dict[str, str] = field(default_factory=dict)
    json_files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def dtype_name(self) -> str:
        """The config.json torch_dtype of these tensors (the first floating dtype)."""
        dtype = next((d for _, d in self.specs.values() if d in FLOAT_DTYPES), np.dtype(np.float32))
        return "bfloat16" if dtype == ml_dtypes.bfloat16 else dtype.name


# ------------------------------------------------------------------------------------------------
# Formats


def detect_format(path: str | os.PathLike) -> str:
    """"hf", "flax" or "meta" from the files in a checkpoint folder; CheckpointError if none fits."""
    from llama_shared.convert_flax import is_flax_checkpoint
    from llama_shared.convert_meta import is_meta_checkpoint

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"source {path} is not a folder")
    if is_meta_checkpoint(path):
        return "meta"
    if any(os.path.exists(os.path.join(path, f)) for f in (SINGLE_FILE, INDEX_FILE)):
        return "hf"
    if is_flax_checkpoint(path):
        return "flax"
    raise CheckpointError(f"{path} holds no checkpoint this converter reads: expected config.json with "
                          f"{SINGLE_FILE} or {INDEX_FILE} (hf), config.json with an Orbax params/ folder or "
                          f"flax_model.msgpack (flax), or params.json with consolidated.NN.pth (meta)")


def open_source(path: str | os.PathLike, fmt: str) -> TensorSource:
    """Read the checkpoint at path in the given format as a TensorSource."""
    if fmt == "hf":
        return hf_source(path)
    if fmt == "flax":
        from llama_shared.convert_flax import flax_source

        return flax_source(path)
    if fmt == "meta":
        from llama_shared.convert_meta import meta_source

        return meta_source(path)
    raise CheckpointError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")


def hf_source(path: str | os.PathLike) -> TensorSource:
    """A Hugging Face folder: config.json + model.safetensors or shards with an index."""
    path = os.fspath(path)
    config = LlamaConfig.from_json_file(os.path.join(path, "config.json"))
    checkpoint = Checkpoint(path)
    keys = [k for k in checkpoint.keys() if not is_ignored_key(k)
            and not (config.tie_word_embeddings and k == "lm_head.weight")]
    keys.sort(key=hf_key_order)
    specs = {k: (checkpoint.shape(k), checkpoint.dtype(k)) for k in keys}
    return TensorSource(config, specs, lambda: ((k, checkpoint.read_once(k)) for k in keys), carried_files(path))


def carried_files(path: str, names: tuple[str, ...] = CARRIED_FILES) -> dict[str, str]:
    """The tokenizer and generation-config files present in a folder, by name."""
    return {name: os.path.join(path, name) for name in names if os.path.isfile(os.path.join(path, name))}


def write_hf(source: TensorSource, directory: str, shard_size: int = DEFAULT_SHARD_SIZE) -> None:
    """Write config.json, safetensors (sharded with an index above shard_size) and the carried files."""
    write_checkpoint(directory, source.specs, source.tensors(), shard_size, write_behind=True)
    source.config.replace(torch_dtype=source.dtype_name).save_pretrained(directory)
    write_side_files(source, directory)


def write_side_files(source: TensorSource, directory: str, names: tuple[str, ...] = CARRIED_FILES) -> None:
    """Copy the carried files and write the generated JSON ones that the target format keeps."""
    import json

    for name, path in source.files.items():
        if name in names:
            shutil.copyfile(path, os.path.join(directory, name))
    for name, content in source.json_files.items():
        if name in names and name not in source.files:
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, sort_keys=True)
                f.write("\n")


# ------------------------------------------------------------------------------------------------
# Transforms on a source


def cast_source(source: TensorSource, dtype: np.dtype) -> TensorSource:
    """The same source with every floating tensor cast to dtype (integer tensors unchanged)."""
    dtype = np.dtype(dtype)

    def target(d: np.dtype) -> np.dtype:
        return dtype if d in FLOAT_DTYPES else d

    specs = {k: (shape, target(d)) for k, (shape, d) in source.specs.items()}
    tensors = lambda: ((k, a.astype(target(a.dtype), copy=False)) for k, a in source.tensors())  # noqa: E731
    return replace(source, specs=specs, tensors=tensors)


def prefetched(source: TensorSource) -> TensorSource:
    """The same source read one tensor ahead by a background thread (see read_ahead)."""
    return replace(source, tensors=lambda: read_ahead(source.tensors))


def read_ahead(items: Callable[[], Iterator[T]]) -> Iterator[T]:
    """The items of items() produced one ahead by a background thread, so that reading the next
    tensor overlaps transforming and writing this one (file reads and numpy copies release the GIL).
    At most three items are alive: the one in use, one waiting, one being produced. An error in the
    thread is raised here; closing this iterator stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items():
                if not hand_over(item):
                    return
            hand_over(_END)
        except BaseException as error:  # noqa: BLE001 - re-raised in the consuming thread
            hand_over(_Failure(error))

    producer = threading.Thread(target=produce, name="checkpoint-read-ahead", daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        producer.join()


_END = object()


@dataclass
class _Failure:
    error: BaseException


def with_progress(source: TensorSource, description: str) -> TensorSource:
    """The same source, showing a tqdm progress bar over the bytes it yields."""
    from tqdm.auto import tqdm

    total = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d in source.specs.values())

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        with tqdm(total=total, unit="B", unit_scale=True, desc=description) as bar:
            for key, array in source.tensors():
                yield key, array
                bar.update(array.nbytes)

    return replace(source, tensors=tensors)


# ------------------------------------------------------------------------------------------------
# Safe output


def check_destination(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool) -> None:
    """Refuse a destination inside the source (or holding it) and a non-empty one unless overwrite."""
    src_real, dst_real = os.path.realpath(src), os.path.realpath(dst)
    if dst_real == src_real or dst_real.startswith(src_real + os.sep):
        raise CheckpointError(f"destination {dst} is inside the source {src}; choose a folder outside it")
    if src_real.startswith(dst_real + os.sep):
        raise CheckpointError(f"the source {src} is inside the destination {dst}, which conversion would replace")
    if os.path.exists(dst_real) and not os.path.isdir(dst_real):
        raise CheckpointError(f"destination {dst} exists and is not a folder")
    if os.path.isdir(dst_real) and os.listdir(dst_real) and not overwrite:
        raise CheckpointError(f"destination {dst} is not empty; pass overwrite=True (--overwrite) to replace it")


@contextmanager
def staged_output(dst: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder beside dst; on success rename it into place (replacing dst), on any
    error remove it, so dst is either untouched or complete."""
    dst = os.path.realpath(dst)
    parent, name = os.path.split(dst)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.chmod(staging, 0o777 & ~_umask())
    if not os.path.exists(dst):
        os.rename(staging, dst)
        return
    retired = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=parent)
    os.rename(dst, os.path.join(retired, name))
    os.rename(staging, dst)
    shutil.rmtree(retired)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------------
# Entry point


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, from_format: str | None = None,
            dtype: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, num_shards: int = 1,
            overwrite: bool = False, progress: bool = True) -> str:
    """Convert the checkpoint folder src into dst in format ``to`` ("hf", "flax" or "meta").

    The source format is detected unless from_format names it. dtype ("bfloat16", "float16",
    "float32") casts floating tensors; shard_size caps each safetensors file (hf); num_shards is
    the number of model-parallel consolidated.NN.pth files (meta). Returns dst.
    """
    if to not in FORMATS:
        raise CheckpointError(f"unknown target format {to!r}; expected one of {FORMATS}")
    check_destination(src, dst, overwrite)
    fmt = from_format or detect_format(src)
    source = open_source(src, fmt)
    if dtype is not None:
        source = cast_source(source, dtype_from_name(dtype))
    source = prefetched(source)
    if progress:
        source = with_progress(source, f"{fmt} -> {to}")
    with staged_output(dst) as staging:
        if to == "hf":
            write_hf(source, staging, shard_size)
        elif to == "flax":
            from llama_shared.convert_flax import write_flax

            write_flax(source, staging)
        else:
            from llama_shared.convert_meta import write_meta

            write_meta(source, staging, num_shards)
    return os.fspath(dst)
