"""The checkpoint formats the converter knows, by name, in the order detection tries them. Adding a
format is adding a module under formats/ and its FORMAT here."""

from __future__ import annotations

import os

from llama_shared.errors import CheckpointError, ConversionError
from llama_twin.conversion.formats import flax, gguf, hf, meta
from llama_twin.conversion.formats.base import Format
from llama_twin.conversion.source import TensorSource

# Meta first: a Meta folder may also hold a config.json left by other tools. GGUF is the one file.
REGISTRY: dict[str, Format] = {f.name: f for f in (meta.FORMAT, hf.FORMAT, flax.FORMAT, gguf.FORMAT)}
FORMATS = tuple(REGISTRY)


def get_format(name: str) -> Format:
    """The Format called name; ConversionError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ConversionError(f"unknown checkpoint format {name!r}; expected one of {FORMATS}")
    return REGISTRY[name]


def detect_format(path: str | os.PathLike) -> str:
    """The name of the format of the checkpoint folder (or single file) at path; CheckpointError if
    none fits."""
    path = os.fspath(path)
    if os.path.isfile(path):
        single = [fmt for fmt in REGISTRY.values() if fmt.single_file]
        for fmt in single:
            if fmt.detect(path):
                return fmt.name
        raise CheckpointError(f"source {path} is a file but not {' or '.join(f.marker for f in single)}; other "
                              "checkpoints are folders")
    if not os.path.isdir(path):
        raise CheckpointError(f"source {path} is not a folder or a checkpoint file")
    for fmt in REGISTRY.values():
        if not fmt.single_file and fmt.detect(path):
            return fmt.name
    expected = ", ".join(f"{f.marker} ({f.name})" for f in REGISTRY.values())
    raise CheckpointError(f"{path} holds no checkpoint this converter reads: expected {expected}")


def open_source(path: str | os.PathLike, fmt: str) -> TensorSource:
    """Read the checkpoint at path in the named format as a TensorSource."""
    return get_format(fmt).read(os.fspath(path))
