"""TensorSource, what every format reads into and every writer consumes: the config plus the tensors
under Hugging Face names, produced one at a time, so a conversion holds a few tensors (one read
ahead while the last is written), never the model. Also the transforms on a source (cast, read
ahead, progress) and the tokenizer and generation files a conversion carries along.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from llama_shared.config import LlamaConfig
from llama_shared.parameters import FLOAT_DTYPES

# Files beside the weights that a converted checkpoint keeps (those the target format can use).
CARRIED_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "chat_template.jinja", "generation_config.json")

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
# Files beside the weights


def carried_files(path: str, names: tuple[str, ...] = CARRIED_FILES) -> dict[str, str]:
    """The tokenizer and generation-config files present in a folder, by name."""
    return {name: os.path.join(path, name) for name in names if os.path.isfile(os.path.join(path, name))}


def write_side_files(source: TensorSource, directory: str, names: tuple[str, ...] = CARRIED_FILES) -> None:
    """Copy the carried files and write the generated JSON ones that the target format keeps."""
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
    total = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d in source.specs.values())

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        with tqdm(total=total, unit="B", unit_scale=True, desc=description) as bar:
            for key, array in source.tensors():
                yield key, array
                bar.update(array.nbytes)

    return replace(source, tensors=tensors)
