"""convert(): read a checkpoint in one format and write it in another, tensor by tensor, into a
temporary folder renamed into place when complete."""

from __future__ import annotations

import os

from llama_shared.checkpoints import DEFAULT_SHARD_SIZE, dtype_from_name
from llama_shared.parameters import check_tensors, model_class_of
from llama_twin.conversion.formats.base import WriteOptions
from llama_twin.conversion.registry import detect_format, get_format, open_source
from llama_twin.conversion.source import cast_source, prefetched, with_progress
from llama_twin.conversion.staging import check_destination, staged_file, staged_output


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, from_format: str | None = None,
            dtype: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, num_shards: int = 1,
            gguf_type: str = "f16", overwrite: bool = False, progress: bool = True) -> str:
    """Convert the checkpoint src (a folder, or a .gguf file) into dst in format ``to`` ("hf",
    "flax", "meta" or "gguf").

    The source format is detected unless from_format names it; its tensors are checked against its
    config (names, shapes, dtypes, nothing extra) before anything is written. dtype ("bfloat16",
    "float16", "float32") casts floating tensors; shard_size caps each safetensors file (hf);
    num_shards is the number of model-parallel consolidated.NN.pth files (meta); gguf_type the GGML
    type of the matrices (gguf: f32, f16, bf16, q8_0, q4_0). Returns dst.
    """
    target = get_format(to)
    check_destination(src, dst, overwrite, target.single_file)
    fmt = from_format or detect_format(src)
    source = open_source(src, fmt)
    check_tensors(source.specs, source.config, model_class_of(source.config), os.fspath(src), exact=True)
    if dtype is not None:
        source = cast_source(source, dtype_from_name(dtype))
    source = prefetched(source)
    if progress:
        source = with_progress(source, f"{fmt} -> {to}")
    options = WriteOptions(shard_size=shard_size, num_shards=num_shards, gguf_type=gguf_type)
    with (staged_file if target.single_file else staged_output)(dst, overwrite) as staging:
        target.write(source, staging, options)
    return os.fspath(dst)
