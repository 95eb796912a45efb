"""The Hugging Face format: config.json + model.safetensors, or shards with an index."""

from __future__ import annotations

import os

from llama_shared.checkpoints import INDEX_FILE, SINGLE_FILE, Checkpoint, write_checkpoint
from llama_shared.config import LlamaConfig
from llama_shared.naming import hf_key_order, is_ignored_key
from llama_twin.conversion.formats.base import Format, WriteOptions
from llama_twin.conversion.source import TensorSource, carried_files, write_side_files


def is_hf_checkpoint(path: str) -> bool:
    """True for a folder with model.safetensors or model.safetensors.index.json."""
    return any(os.path.exists(os.path.join(path, f)) for f in (SINGLE_FILE, INDEX_FILE))


def hf_source(path: str | os.PathLike) -> TensorSource:
    """A Hugging Face folder's tensors, in the canonical order, each read once from disk."""
    path = os.fspath(path)
    config = LlamaConfig.from_json_file(os.path.join(path, "config.json"))
    checkpoint = Checkpoint(path)
    keys = [k for k in checkpoint.keys() if not is_ignored_key(k)
            and not (config.tie_word_embeddings and k == "lm_head.weight")]
    keys.sort(key=hf_key_order)
    specs = {k: (checkpoint.shape(k), checkpoint.dtype(k)) for k in keys}
    return TensorSource(config, specs, lambda: ((k, checkpoint.read_once(k)) for k in keys), carried_files(path))


def write_hf(source: TensorSource, directory: str, options: WriteOptions) -> None:
    """Write config.json, safetensors (sharded with an index above options.shard_size) and the carried files."""
    write_checkpoint(directory, source.specs, source.tensors(), options.shard_size, write_behind=True)
    source.config.replace(torch_dtype=source.dtype_name).save_pretrained(directory)
    write_side_files(source, directory)


FORMAT = Format("hf", f"config.json with {SINGLE_FILE} or {INDEX_FILE}", is_hf_checkpoint, hf_source, write_hf)
