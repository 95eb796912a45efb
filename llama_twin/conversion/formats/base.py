"""What a checkpoint format module provides to the conversion engine: a Format record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llama_shared.checkpoints import DEFAULT_SHARD_SIZE
from llama_twin.conversion.source import TensorSource


@dataclass(frozen=True)
class WriteOptions:
    """Settings of the written checkpoint; each format reads the ones it has a use for."""

    shard_size: int = DEFAULT_SHARD_SIZE  # hf: the largest safetensors file
    num_shards: int = 1  # meta: model-parallel consolidated.NN.pth files
    gguf_type: str = "f16"  # gguf: the GGML type of the matrices (f32, f16, bf16, q8_0, q4_0)


@dataclass(frozen=True)
class Format:
    """A checkpoint format: its name (the CLI's --to/--from value), the files that mark a folder of
    it (for error messages), and functions to detect a checkpoint, read one as a TensorSource and
    write a source into an empty folder, or, for a single-file format, into a new file."""

    name: str
    marker: str
    detect: Callable[[str], bool]
    read: Callable[[str], TensorSource]
    write: Callable[[TensorSource, str, WriteOptions], None]
    single_file: bool = False
