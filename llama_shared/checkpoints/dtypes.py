"""Tensor dtypes by the names checkpoints and users write them: safetensors' codes ("BF16") and
config.json's torch_dtype names ("bfloat16"), as numpy dtypes (bfloat16 and float8 from ml_dtypes)."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from llama_shared.errors import CheckpointError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def dtype_from_name(name: str) -> np.dtype:
    """numpy dtype for "float32", "bfloat16", "float16" (the names config.json and users write)."""
    names = {"float32": np.float32, "float": np.float32, "float16": np.float16, "half": np.float16,
             "bfloat16": ml_dtypes.bfloat16, "float64": np.float64}
    if name not in names:
        raise CheckpointError(f"unknown dtype {name!r}; expected one of {sorted(names)}")
    return np.dtype(names[name])


def tensor_nbytes(checkpoint: Any, key: str) -> int:
    """Stored size in bytes of one tensor of a Checkpoint (or any reader with shape() and dtype())."""
    return int(np.prod(checkpoint.shape(key), dtype=np.int64)) * checkpoint.dtype(key).itemsize


def requested_dtype(dtype: Any, config_dtype: str | None) -> Any:
    """What a from_pretrained dtype argument asks for: None is float32 (as transformers), "auto" the
    checkpoint's torch_dtype, a name its numpy dtype; a framework dtype object is returned as given."""
    if dtype is None:
        return np.dtype(np.float32)
    if isinstance(dtype, str):
        return dtype_from_name((config_dtype or "float32") if dtype == "auto" else dtype)
    return dtype
