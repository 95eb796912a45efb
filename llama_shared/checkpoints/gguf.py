"""GGUF, llama.cpp's single-file format, read for the llama architecture.

`GGUFCheckpoint` parses a file with the `gguf` package's reader and checks it before anything is
read: the magic, every tensor's type, shape and place in the file, the architecture, and the
tensor set the metadata implies. It then serves the model as Hugging Face sees it: `config()` (a
LlamaConfig from the metadata), `read(key)` (one tensor under its Hugging Face name, dequantized
with gguf's own `dequantize`, q/k rows back from llama.cpp's interleaved RoPE layout to
rotate_half), `raw(key)` (the tensor's GGML type and its stored blocks, untouched, for readers
that keep a quantized format) and `gguf_metadata` (for the tokenizer, tokenizers/gguf.py). It reads
like a safetensors Checkpoint (keys, shape, dtype, read), so the twins' loaders take either.

Each tensor is read from the file on its own (not through the reader's memory map), so reading a
model holds about one tensor, not the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from llama_shared.checkpoints.hub import resolve_model_dir
from llama_shared.checkpoints.pagecache import read_into, read_tensor
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError
from llama_shared.naming import causal_lm_shapes, check_shape, gguf_key, hf_rotary_rows_heads, \
    rotate_half_from_interleaved

GGUF_MAGIC = b"GGUF"
ARCHITECTURE = "llama"
# llama.cpp's per-frequency divisors of the RoPE frequencies (how it stores Llama 3.1's scaling).
ROPE_FREQS = "rope_freqs.weight"
# Bytes of quantized blocks dequantized at a time.
DEQUANTIZE_CHUNK = 8 * 2**20


def _types():
    from gguf import GGMLQuantizationType as T

    return T


def supported_types() -> dict[int, str]:
    """GGML tensor types this reader dequantizes, by number: name."""
    T = _types()
    names = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
    return {int(T[name]): name for name in names}


def stored_dtype(tensor_type: int) -> np.dtype:
    """The numpy dtype a tensor of this type reads as: its own for F32/F16/BF16, float32 when dequantized."""
    import ml_dtypes

    T = _types()
    return {int(T.F16): np.dtype(np.float16), int(T.BF16): np.dtype(ml_dtypes.bfloat16)}.get(
        int(tensor_type), np.dtype(np.float32))


@dataclass(frozen=True)
class GGUFTensor:
    """A tensor as stored: its GGUF name, GGML type, numpy-order shape, and where its bytes lie."""

    name: str
    tensor_type: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        return _types()(self.tensor_type).name


class GGUFCheckpoint:
    """A llama-architecture GGUF file, checked on opening; errors name the file and the field or tensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = self.directory = os.fspath(path)
        self._check_magic()
        reader = self._parse()
        self.gguf_metadata: dict[str, Any] = {name: _field_value(field) for name, field in reader.fields.items()
                                              if not name.startswith("GGUF.")}
        self.tensors: dict[str, GGUFTensor] = {}
        size = os.path.getsize(self.path)
        for tensor in reader.tensors:
            shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
            stored = GGUFTensor(tensor.name, int(tensor.tensor_type), shape, int(tensor.data_offset),
                                int(tensor.n_bytes))
            if stored.offset + stored.nbytes > size:
                raise CheckpointError(f"{self.path} is truncated: tensor {tensor.name!r} ends at byte "
                                      f"{stored.offset + stored.nbytes}, the file has {size}")
            self.tensors[tensor.name] = stored
        architecture = self.gguf_metadata.get("general.architecture")
        if architecture != ARCHITECTURE:
            raise CheckpointError(f"{self.path}: metadata field 'general.architecture' is {architecture!r}; "
                                  f"only {ARCHITECTURE!r} is supported")
        self._check_types()
        self._config = self._build_config()
        self._check_tensor_set()

    # ------------------------------------------------------------------------------------------
    # Opening

    def _check_magic(self) -> None:
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
        except FileNotFoundError:
            raise CheckpointError(f"no GGUF file at {self.path}") from None
        if magic != GGUF_MAGIC:
            raise CheckpointError(f"{self.path} is not a GGUF file: it starts with {magic!r}, expected {GGUF_MAGIC!r}")

    def _parse(self):
        from gguf import GGUFReader

        try:
            return GGUFReader(self.path, "r")
        except (ValueError, IndexError, OverflowError, UnicodeDecodeError, KeyError) as exc:
            raise CheckpointError(f"{self.path} is truncated or corrupt: the GGUF header cannot be read "
                                  f"({type(exc).__name__}: {exc})") from None

    def _check_types(self) -> None:
        supported = supported_types()
        for tensor in self.tensors.values():
            if tensor.tensor_type not in supported:
                raise CheckpointError(f"{self.path}: tensor {tensor.name!r} has GGML type {tensor.type_name}; "
                                      f"supported types are {', '.join(supported.values())}")

    def _field(self, key: str, default: Any = ..., kind: type | tuple[type, ...] = (int, float)) -> Any:
        value = self.gguf_metadata.get(key, default)
        if value is ...:
            raise CheckpointError(f"{self.path}: metadata field {key!r} is missing")
        if value is not None and value is not default and not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise CheckpointError(f"{self.path}: metadata field {key!r} is {value!r}; expected {names}")
        return value

    def _build_config(self) -> LlamaConfig:
        arch = ARCHITECTURE
        heads = self._field(f"{arch}.attention.head_count", kind=int)
        hidden = self._field(f"{arch}.embedding_length", kind=int)
        head_dim = self._field(f"{arch}.attention.key_length", None, int) or (hidden // heads if heads else None)
        rope_dim = self._field(f"{arch}.rope.dimension_count", None, int)
        if rope_dim is not None and rope_dim != head_dim:
            raise CheckpointError(f"{self.path}: metadata field '{arch}.rope.dimension_count' is {rope_dim}; a "
                                  f"Llama rotates the whole head of {head_dim}")
        if "token_embd.weight" not in self.tensors:
            raise CheckpointError(f"{self.path} has no tensor 'token_embd.weight' (the token embeddings)")
        vocab = self.tensors["token_embd.weight"].shape[0]
        data = {
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self._field(f"{arch}.feed_forward_length", kind=int),
            "num_hidden_layers": self._field(f"{arch}.block_count", kind=int),
            "num_attention_heads": heads,
            "num_key_value_heads": self._field(f"{arch}.attention.head_count_kv", heads, int),
            "head_dim": head_dim,
            "max_position_embeddings": self._field(f"{arch}.context_length", kind=int),
            "rms_norm_eps": float(self._field(f"{arch}.attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self._field(f"{arch}.rope.freq_base", 10000.0)),
            "rope_scaling": self._rope_scaling(),
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "attention_bias": "blk.0.attn_q.bias" in self.tensors,
            "mlp_bias": "blk.0.ffn_up.bias" in self.tensors,
            "bos_token_id": self._field("tokenizer.ggml.bos_token_id", None, int),
            "eos_token_id": self._field("tokenizer.ggml.eos_token_id", None, int),
            "pad_token_id": self._field("tokenizer.ggml.padding_token_id", None, int),
        }
        try:
            return LlamaConfig.from_dict(data)
        except Exception as exc:  # ConfigError or a wrong type the dataclass rejects
            raise CheckpointError(f"{self.path}: the metadata gives no valid Llama config: {exc}") from None

    def _rope_scaling(self) -> dict[str, Any] | None:
        """rope_scaling from llama.cpp's rope.scaling keys; a rope_freqs tensor (per-frequency divisors,
        how llama.cpp stores Llama 3.1's scaling) as longrope with both factor lists equal to it."""
        arch = ARCHITECTURE
        kind = self._field(f"{arch}.rope.scaling.type", None, str)
        factor = self._field(f"{arch}.rope.scaling.factor", None)
        original = self._field(f"{arch}.rope.scaling.original_context_length", None, int)
        if ROPE_FREQS in self.tensors:
            factors = self._read_stored(self.tensors[ROPE_FREQS]).astype(np.float64).tolist()
            return {"rope_type": "longrope", "short_factor": factors, "long_factor": factors,
                    "attention_factor": 1.0, "original_max_position_embeddings":
                        original or self._field(f"{arch}.context_length", kind=int)}
        if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
            return None
        if kind == "linear":
            return {"rope_type": "linear", "factor": float(factor)}
        if kind == "yarn":
            scaling: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor)}
            if original:
                scaling["original_max_position_embeddings"] = original
            for key in ("beta_fast", "beta_slow"):
                value = self._field(f"{arch}.rope.scaling.yarn_{key}", None)
                if value:
                    scaling[key] = float(value)
            return scaling
        raise CheckpointError(f"{self.path}: metadata field '{arch}.rope.scaling.type' is {kind!r}; "
                              "expected none, linear or yarn")

    def _check_tensor_set(self) -> None:
        """Every tensor the metadata implies is there with its shape, and nothing else."""
        expected = {gguf_key(key): shape for key, shape in self.hf_shapes().items()}
        present = set(self.tensors) - {ROPE_FREQS}
        missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
        if missing:
            raise CheckpointError(f"{self.path} lacks tensor(s) {missing[:4]} that its metadata implies "
                                  f"({self._config.num_hidden_layers} blocks)")
        if extra:
            raise CheckpointError(f"{self.path} holds tensor(s) {extra[:4]} that its metadata does not account for "
                                  f"({self._config.num_hidden_layers} blocks, llama architecture)")
        for name, shape in expected.items():
            check_shape(name, self.tensors[name].shape, shape, self.path)

    # ------------------------------------------------------------------------------------------
    # The model

    def config(self) -> LlamaConfig:
        """The model's LlamaConfig, from the metadata."""
        return self._config

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """{Hugging Face key: shape} of the model's tensors, in transformers' order."""
        return causal_lm_shapes(self._config)

    def keys(self) -> list[str]:
        """The Hugging Face keys of the stored tensors, in transformers' order."""
        return list(self.hf_shapes())

    def __contains__(self, key: str) -> bool:
        return key in self.hf_shapes()

    @property
    def metadata(self) -> dict[str, str]:
        """A safetensors checkpoint's llama-twin metadata (quantization settings): none in a GGUF file."""
        return {}

    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's shape under Hugging Face's layout."""
        return self._tensor(key).shape

    def dtype(self, key: str) -> np.dtype:
        """The dtype read() returns for a key (the stored one for F32/F16/BF16, else float32)."""
        return stored_dtype(self._tensor(key).tensor_type)

    def raw(self, key: str) -> tuple[GGUFTensor, np.ndarray]:
        """A tensor's record and its stored bytes (quantized blocks as written, GGUF row order), unread
        by any decoder."""
        tensor = self._tensor(key)
        return tensor, read_tensor(self.path, tensor.offset, (tensor.nbytes,), np.dtype(np.uint8), tensor.name)

    def read(self, key: str) -> np.ndarray:
        """The tensor under Hugging Face key: dequantized by gguf, q/k rows in rotate_half order."""
        array = self._read_stored(self._tensor(key))
        heads = hf_rotary_rows_heads(key, self._config.num_attention_heads, self._config.num_key_value_heads)
        return array if heads is None else rotate_half_from_interleaved(array, heads)

    def _tensor(self, key: str) -> GGUFTensor:
        name = gguf_key(key)
        if name not in self.tensors:
            raise CheckpointError(f"{self.path} has no tensor {name!r} (Hugging Face {key!r})")
        return self.tensors[name]

    def _read_stored(self, tensor: GGUFTensor) -> np.ndarray:
        """The stored values; quantized rows are read and dequantized a few MB at a time into the
        float32 result, so dequantizing holds the result and one chunk, not the blocks and gguf's
        whole-tensor temporaries too."""
        from gguf import GGML_QUANT_SIZES, dequantize

        dtype = stored_dtype(tensor.tensor_type)
        if tensor.tensor_type in (int(_types().F32), int(_types().F16), int(_types().BF16)):
            return read_tensor(self.path, tensor.offset, tensor.shape, dtype, tensor.name)
        kind = _types()(tensor.tensor_type)
        block_size, type_size = GGML_QUANT_SIZES[kind]
        row_bytes = tensor.shape[-1] // block_size * type_size
        out = np.empty(tensor.shape, np.float32)
        rows = out.reshape(-1, tensor.shape[-1])
        step = max(1, DEQUANTIZE_CHUNK // row_bytes)
        buffer = np.empty((step, row_bytes), np.uint8)
        with open(self.path, "rb", buffering=0) as f:
            for start in range(0, rows.shape[0], step):
                chunk = buffer[:min(step, rows.shape[0] - start)]
                if read_into(f, memoryview(chunk.reshape(-1)), tensor.offset + start * row_bytes) != chunk.size:
                    raise CheckpointError(f"{self.path} is truncated inside tensor {tensor.name!r}")
                rows[start:start + len(chunk)] = dequantize(chunk, kind)
        return out


def _field_value(field: Any) -> Any:
    """A reader field as a Python value: str, int, float, bool, or a list of them."""
    from gguf import GGUFValueType

    value = field.contents()
    if isinstance(value, np.generic):
        value = value.item()
    if field.types and field.types[0] == GGUFValueType.ARRAY and not isinstance(value, list):
        value = list(value)
    return value


def open_gguf(path_or_repo_id: str | os.PathLike, gguf_file: str, revision: str | None = None) -> GGUFCheckpoint:
    """The GGUF file of from_pretrained(path, gguf_file=...): gguf_file inside a local folder or a hub
    repo (only that file and the JSON files beside it are fetched)."""
    directory = resolve_model_dir(path_or_repo_id, required=(gguf_file,), allow_patterns=(gguf_file, "*.json"),
                                  revision=revision)
    return GGUFCheckpoint(os.path.join(directory, gguf_file))
