"""A GGUF file's Q8_0, Q4_0 and Q4_1 matrices as llama-twin's quantized format, bit for bit.

The three block types are the format's int8 / int4 with groups of 32 and float16 scales:

  Q8_0  34 bytes: float16 d, 32 int8 codes q;                W = q * d        -> int8-g32
  Q4_0  18 bytes: float16 d, 16 bytes of nibbles n;          W = (n - 8) * d  -> int4-g32
  Q4_1  20 bytes: float16 d, float16 m, 16 bytes of nibbles;  W = n * d + m    -> int4-g32, float zero points

so codes and scales are copied, never dequantized and requantized. A GGML nibble byte j of a block
holds element j in its low half and element j + 16 in its high half; the format packs columns
2j and 2j + 1 into a byte, so the same codes are only regrouped. q/k rows move from llama.cpp's
interleaved RoPE layout to rotate_half as the float tensors do (a row permutation of every leaf).

QuantizedGGUF serves such a file to the twins' loaders: its config carries the quantization, and
each quantized module's ``weight`` appears as ``qweight`` / ``scales`` [/ ``mins``]. A module is
quantized when every one of its matrices has the type of the first layer's attn_q (the embedding
too, so it loads as a QuantizedEmbed / QuantizedEmbedding); others (llama.cpp often writes
output.weight as Q6_K) load dequantized to float.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from llama_shared import quantization as q
from llama_shared.checkpoints.gguf import GGUFCheckpoint
from llama_shared.config import LlamaConfig
from llama_shared.naming import gguf_key, hf_rotary_rows_heads, rotate_half_from_interleaved

BLOCK = 32
MAPPED = {"Q8_0": q.QuantizationConfig(8, BLOCK, scale_dtype="float16"),
          "Q4_0": q.QuantizationConfig(4, BLOCK, scale_dtype="float16"),
          "Q4_1": q.QuantizationConfig(4, BLOCK, symmetric=False, zero_point_domain="float", scale_dtype="float16")}
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}


def block_tensors(type_name: str, stored: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The format's tensors of one matrix (rows, columns) from its stored blocks (uint8)."""
    rows, columns = shape
    blocks = stored.reshape(rows, columns // BLOCK, BLOCK_BYTES[type_name])
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]
    if type_name == "Q8_0":
        return {"qweight": np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, columns),
                "scales": scales}
    start = 2 if type_name == "Q4_0" else 4
    nibble_bytes = blocks[..., start:]
    codes = np.concatenate([nibble_bytes & 15, nibble_bytes >> 4], axis=-1).astype(np.int8) - 8
    tensors = {"qweight": q.pack_int4(codes.reshape(rows, columns)), "scales": scales}
    if type_name == "Q4_1":
        tensors["mins"] = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0]
    return tensors


def module_name(key: str) -> str:
    """The leaf module name of a Hugging Face weight key (model.layers.0.self_attn.q_proj.weight -> q_proj)."""
    return key.rsplit(".", 2)[-2]


class QuantizedGGUF:
    """A GGUFCheckpoint whose Q8_0 / Q4_0 / Q4_1 matrices read as the quantized format (see the module)."""

    def __init__(self, checkpoint: GGUFCheckpoint, quantization: q.QuantizationConfig):
        self.checkpoint, self.quantization = checkpoint, quantization
        self.path = self.directory = checkpoint.path
        self.gguf_metadata = checkpoint.gguf_metadata
        self._config = q.with_quantization(checkpoint.config(), quantization)
        self._sources: dict[str, tuple[str, str]] = {}
        for key in checkpoint.keys():
            if key.endswith(".weight") and len(checkpoint.shape(key)) == 2 \
                    and quantization.quantizes(module_name(key), self._config):
                for leaf in quantization.leaves():
                    self._sources[f"{key.removesuffix('.weight')}.{leaf}"] = (key, leaf)
        self._cached: tuple[str, dict[str, np.ndarray]] | None = None

    @property
    def metadata(self) -> dict[str, str]:
        """The settings as a quantized safetensors checkpoint records them, so loaders check them alike."""
        return {q.METADATA_KEY: json.dumps(self.quantization.to_dict(), sort_keys=True)}

    def config(self) -> LlamaConfig:
        return self._config

    def keys(self) -> list[str]:
        replaced = {source for source, _ in self._sources.values()}
        return [k for k in self.checkpoint.keys() if k not in replaced] + list(self._sources)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self._spec(key)[0] if key in self._sources else self.checkpoint.shape(key)

    def dtype(self, key: str) -> np.dtype:
        return self._spec(key)[1] if key in self._sources else self.checkpoint.dtype(key)

    def read(self, key: str) -> np.ndarray:
        if key not in self._sources:
            return self.checkpoint.read(key)
        source, leaf = self._sources[key]
        if self._cached is None or self._cached[0] != source:
            tensor, stored = self.checkpoint.raw(source)
            tensors = block_tensors(tensor.type_name, stored, tensor.shape)
            config = self._config
            heads = hf_rotary_rows_heads(source, config.num_attention_heads, config.num_key_value_heads)
            if heads is not None:
                tensors = {name: rotate_half_from_interleaved(array, heads) for name, array in tensors.items()}
            self._cached = (source, tensors)
        return self._cached[1][leaf]

    def _spec(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        source, leaf = self._sources[key]
        return self.quantization.tensor_specs(*self.checkpoint.shape(source), np.float32)[leaf]


def gguf_quantization(checkpoint: GGUFCheckpoint) -> q.QuantizationConfig | None:
    """The quantization a GGUF file's matrices map to without requantizing, or None (load as float)."""
    type_of = {key: checkpoint.tensors[gguf_key(key)].type_name for key in checkpoint.keys()
               if key.endswith(".weight") and len(checkpoint.shape(key)) == 2}
    reference = type_of.get("model.layers.0.self_attn.q_proj.weight")
    if reference not in MAPPED:
        return None
    present = {module_name(key) for key in type_of}
    modules = tuple(m for m in q.QUANTIZABLE_MODULES if m in present
                    and all(t == reference for key, t in type_of.items() if module_name(key) == m))
    return replace(MAPPED[reference], modules=modules)


def open_quantized(checkpoint: GGUFCheckpoint) -> GGUFCheckpoint | QuantizedGGUF:
    """The file as the twins load it: quantized where its matrices map (QuantizedGGUF), else as float."""
    quantization = gguf_quantization(checkpoint)
    return checkpoint if quantization is None else QuantizedGGUF(checkpoint, quantization)
