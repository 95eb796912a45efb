"""Safetensors checkpoints: lazy per-tensor reads, streaming writes, sharding with an index.

The format is small enough to read and write directly (an 8-byte header length, a JSON header,
raw little-endian bytes), which gives what the library calls do not: bfloat16 as a numpy dtype
(ml_dtypes), a clear error for a truncated file, and writes that stream one tensor at a time.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from llama_shared.checkpoints.dtypes import DTYPE_NAMES, DTYPES
from llama_shared.checkpoints.pagecache import WriteBehind, read_tensor
from llama_shared.errors import CheckpointError
from llama_shared.files import open_regular, read_json

SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_SIZE = 5 * 10**9


class SafetensorsFile:
    """One .safetensors file, read lazily: tensors are memory-mapped views made on request.

    The header is checked as the safetensors library checks it before anything is read: a JSON object
    of at most MAX_HEADER_BYTES, known dtypes, shapes of non-negative integers, and data offsets that
    tile the data exactly (no gap, no overlap, nothing before the data or past the file's end), each
    span the size its shape and dtype imply.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        header, self._data_start, size = _read_header(self.path)
        metadata = header.pop("__metadata__", None)
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CheckpointError(f"{self.path}: the header's __metadata__ must be an object of strings")
        self.metadata: dict[str, str] = metadata
        self._entries: dict[str, dict[str, Any]] = {name: _checked_entry(self.path, name, entry)
                                                    for name, entry in header.items()}
        _check_spans(self.path, self._entries, size - self._data_start)
        self._mmap: mmap.mmap | None = None
        self._map: np.ndarray | None = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entry(key)["shape"])

    def dtype(self, key: str) -> np.dtype:
        return DTYPES[self._entry(key)["dtype"]]

    def get(self, key: str) -> np.ndarray:
        """The tensor as a read-only view of the mapped file (no copy until it is used)."""
        entry = self._entry(key)
        begin, end = entry["data_offsets"]
        if begin == end:
            return np.zeros(entry["shape"], DTYPES[entry["dtype"]])
        if self._map is None:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._map = np.frombuffer(self._mmap, dtype=np.uint8)
        raw = self._map[self._data_start + begin:self._data_start + end]
        return raw.view(DTYPES[entry["dtype"]]).reshape(entry["shape"])

    def release(self, key: str) -> None:
        """Drop the tensor's mapped pages from this process's resident memory (they stay in the page
        cache; get reads them again on use): a process that copies a block out of each tensor then
        holds its blocks only, not every page it touched. A no-op where madvise is missing."""
        if self._mmap is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        begin, end = self._entry(key)["data_offsets"]
        start = self._data_start + begin
        aligned = start - start % mmap.PAGESIZE
        if end > begin:
            self._mmap.madvise(mmap.MADV_DONTNEED, aligned, self._data_start + end - aligned)

    def read(self, key: str) -> np.ndarray:
        """The tensor as a private copy read from disk, no mapping kept: a pass over a model larger
        than RAM holds only the tensor at hand (mapped pages would stay resident until unmapped)."""
        return self._read(key, keep_cached=True)

    def read_once(self, key: str) -> np.ndarray:
        """Like read, then drops the tensor's bytes from the page cache: for a single pass over a
        checkpoint (conversion), which would otherwise leave the whole file cached."""
        return self._read(key, keep_cached=False)

    def _read(self, key: str, keep_cached: bool) -> np.ndarray:
        entry = self._entry(key)
        return read_tensor(self.path, self._data_start + entry["data_offsets"][0], tuple(entry["shape"]),
                           DTYPES[entry["dtype"]], key, keep_cached)

    def _entry(self, key: str) -> dict[str, Any]:
        try:
            return self._entries[key]
        except KeyError:
            raise CheckpointError(f"tensor {key!r} is not in {self.path}") from None


def _read_header(path: str) -> tuple[dict[str, Any], int, int]:
    """The header object of a safetensors file, where its data starts, and the file's size."""
    try:
        with open_regular(path, CheckpointError) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated: {size} bytes, no safetensors header")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path} is not a safetensors file: its header length {header_len} exceeds "
                                      f"the format's limit of {MAX_HEADER_BYTES} bytes")
            if header_len > size - 8:
                raise CheckpointError(f"{path} is truncated or not a safetensors file: header of "
                                      f"{header_len} bytes in a {size}-byte file")
            header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file: its header is a JSON {type(header).__name__}, "
                              f"not an object")
    return header, 8 + header_len, size


def _checked_entry(path: str, name: str, entry: Any) -> dict[str, Any]:
    """One tensor's header entry, checked: a known dtype, a shape, two offsets spanning its bytes."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} has header entry {entry!r}; expected an object with dtype, shape and "
                              f"data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where} has dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise CheckpointError(f"{where} has shape {shape!r}; expected a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets)
            or offsets[0] > offsets[1]):
        raise CheckpointError(f"{where} has data_offsets {offsets!r}; expected [begin, end] with "
                              f"0 <= begin <= end")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(f"{where} spans {offsets[1] - offsets[0]} bytes (data_offsets {offsets}), but shape "
                              f"{tuple(shape)} of {dtype} takes {nbytes}")
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def _check_spans(path: str, entries: Mapping[str, dict[str, Any]], data_size: int) -> None:
    """The tensors' spans must tile the data from its start to the file's end, in some order."""
    position, previous = 0, None
    for name, entry in sorted(entries.items(), key=lambda item: item[1]["data_offsets"]):
        begin, end = entry["data_offsets"]
        if begin != position:
            what = "overlaps" if begin < position else "leaves a gap after"
            raise CheckpointError(f"{path}: tensor {name!r} (data_offsets {[begin, end]}) {what} "
                                  f"{'the start of the data' if previous is None else repr(previous)}")
        position, previous = end, name
    if position > data_size:
        raise CheckpointError(f"{path} is truncated: its header describes {position} bytes of data but the file "
                              f"holds {data_size}")
    if position < data_size:
        raise CheckpointError(f"{path} has {data_size - position} bytes past the last tensor's data; not a "
                              f"safetensors file as the format defines it")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Checkpoint:
    """The weights of a Hugging Face model folder: model.safetensors, or shards with an index. A folder
    with both is read as transformers reads it: model.safetensors."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        index_path = os.path.join(self.directory, INDEX_FILE)
        single_path = os.path.join(self.directory, SINGLE_FILE)
        if os.path.exists(single_path):
            self._key_to_file = None
        elif os.path.exists(index_path):
            self._key_to_file = _read_index(index_path)
        else:
            raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {self.directory}")
        self._files: dict[str, SafetensorsFile] = {}
        if self._key_to_file is None:
            self._files[SINGLE_FILE] = SafetensorsFile(single_path)
            self._key_to_file = {k: SINGLE_FILE for k in self._files[SINGLE_FILE].keys()}
        else:
            for name in sorted(set(self._key_to_file.values())):
                path = os.path.join(self.directory, name)
                if not os.path.exists(path):
                    raise CheckpointError(f"{index_path} names shard {name!r}, which is missing from "
                                          f"{self.directory}")

    @property
    def metadata(self) -> dict[str, str]:
        return self._file(next(iter(self._key_to_file.values()))).metadata if self._key_to_file else {}

    def keys(self) -> list[str]:
        return list(self._key_to_file)

    def __contains__(self, key: str) -> bool:
        return key in self._key_to_file

    def shape(self, key: str) -> tuple[int, ...]:
        return self._file_for(key).shape(key)

    def dtype(self, key: str) -> np.dtype:
        return self._file_for(key).dtype(key)

    def get(self, key: str) -> np.ndarray:
        return self._file_for(key).get(key)

    def release(self, key: str) -> None:
        """Drop the tensor's mapped pages from resident memory (see SafetensorsFile.release)."""
        self._file_for(key).release(key)

    def read(self, key: str) -> np.ndarray:
        """A private copy of the tensor read from disk (see SafetensorsFile.read)."""
        return self._file_for(key).read(key)

    def read_once(self, key: str) -> np.ndarray:
        """The tensor read, then dropped from the page cache (see SafetensorsFile.read_once)."""
        return self._file_for(key).read_once(key)

    def _file_for(self, key: str) -> SafetensorsFile:
        if key not in self._key_to_file:
            raise CheckpointError(f"tensor {key!r} is not in the checkpoint at {self.directory}")
        return self._file(self._key_to_file[key])

    def _file(self, name: str) -> SafetensorsFile:
        if name not in self._files:
            self._files[name] = SafetensorsFile(os.path.join(self.directory, name))
            missing = [k for k, f in self._key_to_file.items() if f == name and k not in self._files[name]]
            if missing:
                raise CheckpointError(f"{INDEX_FILE} places {missing[0]!r} in {name}, which does not hold it")
        return self._files[name]


def _read_index(index_path: str) -> dict[str, str]:
    """The index's weight_map, each shard named by a plain path inside the folder.

    The check is on the names as written, not on where they lead: huggingface_hub's cache stores a
    snapshot's files as symlinks into ../../blobs/, which a shard may be."""
    try:
        weight_map = read_json(index_path, CheckpointError)["weight_map"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{index_path} is not a safetensors index (expected a 'weight_map' object)") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: 'weight_map' must be a non-empty object of tensor name -> shard file")
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name.endswith(".safetensors"):
            raise CheckpointError(f"{index_path} places tensor {key!r} in {name!r}; expected a .safetensors file name")
        parts = name.replace("\\", "/").split("/")
        if os.path.isabs(name) or "" in parts or ".." in parts:
            raise CheckpointError(f"{index_path} places tensor {key!r} in {name!r}, outside the checkpoint folder")
    return dict(weight_map)


# ------------------------------------------------------------------------------------------------
# Writing


class SafetensorsWriter:
    """Writes one .safetensors file tensor by tensor, in the order given to the constructor.

    With write_behind, the bytes go to disk a few pieces behind the writer and leave the page cache
    (pagecache.WriteBehind): for conversions, which write each file once and do not read it back."""

    def __init__(self, path: str | os.PathLike, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                 metadata: Mapping[str, str] | None = None, write_behind: bool = False):
        self.path = os.fspath(path)
        header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        self._order: list[tuple[str, tuple[int, ...], np.dtype]] = []
        for name, (shape, dtype) in specs.items():
            dtype = np.dtype(dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            self._order.append((name, tuple(shape), dtype))
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)
        self._next = 0
        self._behind: WriteBehind | None = None
        if write_behind:  # from here on every byte goes through the unbuffered file underneath
            self._file.flush()
            self._behind = WriteBehind(self._file.raw, self.path)
            self._offset = self._file.tell()

    def write(self, name: str, array: np.ndarray) -> None:
        expected_name, shape, dtype = self._order[self._next]
        if name != expected_name or tuple(array.shape) != shape or np.dtype(array.dtype) != dtype:
            raise CheckpointError(f"{self.path}: expected tensor {expected_name!r} {shape} {dtype} next, got "
                                  f"{name!r} {tuple(array.shape)} {array.dtype}")
        data = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        if self._behind is None:
            self._file.write(data)
        else:
            self._behind.write(self._offset, data)
            self._offset += len(data)
        self._next += 1

    def close(self) -> None:
        try:
            if self._behind is not None:
                self._behind.finish()
        finally:
            self._file.close()
        if self._next != len(self._order):
            raise CheckpointError(f"{self.path}: closed after {self._next} of {len(self._order)} tensors")

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._file.close()


def plan_shards(specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                max_shard_size: int = DEFAULT_SHARD_SIZE) -> list[list[str]]:
    """Group tensor names, in order, into shards of at most max_shard_size bytes (one tensor may exceed it)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, (shape, dtype) in specs.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_checkpoint(directory: str | os.PathLike, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                     tensors: Iterable[tuple[str, np.ndarray]], max_shard_size: int = DEFAULT_SHARD_SIZE,
                     metadata: Mapping[str, str] | None = None, write_behind: bool = False) -> list[str]:
    """Stream tensors (in the order of specs) into model.safetensors or shards + index; return file names.

    Only one tensor is held at a time. Old weight files of another layout in the folder are removed
    so that a reader never mixes two saves. write_behind: see SafetensorsWriter.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    shards = plan_shards(specs, max_shard_size)
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    _remove_stale_weights(directory, keep=names)
    iterator: Iterator[tuple[str, np.ndarray]] = iter(tensors)
    weight_map: dict[str, str] = {}
    total = 0
    for file_name, shard in zip(names, shards):
        shard_specs = {name: specs[name] for name in shard}
        with SafetensorsWriter(os.path.join(directory, file_name), shard_specs, metadata, write_behind) as writer:
            for _ in shard:
                name, array = next(iterator)
                writer.write(name, array)
                weight_map[name] = file_name
                total += array.nbytes
    if len(names) > 1:
        with open(os.path.join(directory, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
            f.write("\n")
    return names


def save_tensors(directory: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                 max_shard_size: int = DEFAULT_SHARD_SIZE, metadata: Mapping[str, str] | None = None) -> list[str]:
    """Write a dict of numpy arrays as a Hugging Face checkpoint (see write_checkpoint)."""
    specs = {name: (tuple(a.shape), a.dtype) for name, a in tensors.items()}
    return write_checkpoint(directory, specs, tensors.items(), max_shard_size, metadata)


def _remove_stale_weights(directory: str, keep: list[str]) -> None:
    for name in os.listdir(directory):
        stale_shard = name.startswith("model-") and name.endswith(".safetensors")
        if (stale_shard or name in (SINGLE_FILE, INDEX_FILE)) and name not in keep:
            os.remove(os.path.join(directory, name))
