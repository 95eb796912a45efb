"""Checkpoint I/O of the core: safetensors files read lazily and written as a stream, shards with an
index, dtypes by name, the page-cache discipline of single passes, and hub-cache resolution."""

from llama_shared.checkpoints.dtypes import DTYPES, dtype_from_name, requested_dtype, tensor_nbytes
from llama_shared.checkpoints.hub import resolve_model_dir
from llama_shared.checkpoints.safetensors import (DEFAULT_SHARD_SIZE, INDEX_FILE, SINGLE_FILE, Checkpoint,
                                                  SafetensorsFile, SafetensorsWriter, save_tensors, write_checkpoint)

__all__ = ["DTYPES", "dtype_from_name", "requested_dtype", "tensor_nbytes", "resolve_model_dir",
           "DEFAULT_SHARD_SIZE", "INDEX_FILE", "SINGLE_FILE", "Checkpoint", "SafetensorsFile", "SafetensorsWriter",
           "save_tensors", "write_checkpoint"]
