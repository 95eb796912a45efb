"""The checkpoint formats the converter knows, by name, in the order detection tries them. Adding a
format is adding a module under formats/ and its FORMAT here."""

from __future__ import annotations

import os

from llama_shared.errors import CheckpointError, ConversionError
from llama_twin.conversion.formats import flax, hf, meta
from llama_twin.conversion.formats.base import Format
from llama_twin.conversion.source import TensorSource

# Meta first: a Meta folder may also hold a config.json left by other tools.
REGISTRY: dict[str, Format] = {f.name: f for f in (meta.FORMAT, hf.FORMAT, flax.FORMAT)}
FORMATS = tuple(REGISTRY)


def get_format(name: str) -> Format:
    """The Format called name; ConversionError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ConversionError(f"unknown checkpoint format {name!r}; expected one of {FORMATS}")
    return REGISTRY[name]


def detect_format(path: str | os.PathLike) -> str:
    """The name of the format of the checkpoint folder at path; CheckpointError if none fits."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"source {path} is not a folder")
    for fmt in REGISTRY.values():
        if fmt.detect(path):
            return fmt.name
    expected = ", ".join(f"{f.marker} ({f.name})" for f in REGISTRY.values())
    raise CheckpointError(f"{path} holds no checkpoint this converter reads: expected {expected}")


def open_source(path: str | os.PathLike, fmt: str) -> TensorSource:
    """Read the checkpoint at path in the named format as a TensorSource."""
    return get_format(fmt).read(os.fspath(path))
