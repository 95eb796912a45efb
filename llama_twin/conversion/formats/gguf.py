"""The gguf format: llama.cpp's single file, read through the core's GGUFCheckpoint (every tensor
type it dequantizes) and written with the `gguf` package's writer and quantizers (f32, f16, bf16,
q8_0, q4_0), the tokenizer and chat template embedded as llama.cpp's convert_hf_to_gguf.py embeds
them, so a model from any format this package reads runs in llama.cpp.

Reading yields one tensor at a time and gives the target folder the file's tokenizer
(tokenizer.json and tokenizer_config.json, as transformers' GGUF loader would build it). Writing
lays out every tensor's record first (shapes and types are known from the source's specs), then
streams each tensor: q/k rows to llama.cpp's interleaved layout, then converted or quantized, so
memory holds about one tensor. 1-D tensors (norms, biases) stay float32, as llama.cpp keeps them;
a matrix whose rows do not split into the type's blocks is written f16 (llama.cpp's fallback).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from llama_shared.checkpoints.gguf import GGUF_MAGIC, ROPE_FREQS, GGUFCheckpoint
from llama_shared.config import LlamaConfig
from llama_shared.errors import ConversionError
from llama_shared.naming import gguf_key, hf_rotary_rows_heads, interleaved_from_rotate_half
from llama_shared.rope import static_inv_freq
from llama_shared.tokenizers import AutoTokenizer
from llama_shared.tokenizers.files import detect_kind, load_spm_proto
from llama_shared.tokenizers.gguf import gguf_tokenizer
from llama_twin.conversion.formats.base import Format, WriteOptions
from llama_twin.conversion.source import TensorSource, write_side_files
from llama_twin.conversion.tokenizer_metadata import gguf_tokenizer_metadata, tokenizer_files

# llama.cpp's tokenizer model name for a file without a vocabulary.
NO_VOCAB = "no_vocab"
# --type of `llama-twin convert ... --to gguf`: the GGML type of the matrices.
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# llama.cpp's general.file_type for each (LlamaFileType: ALL_F32, MOSTLY_F16, MOSTLY_BF16, MOSTLY_Q8_0, MOSTLY_Q4_0).
_FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}


def is_gguf_file(path: str) -> bool:
    """True for a file named *.gguf or one that starts with GGUF's magic."""
    if not os.path.isfile(path):
        return False
    if path.endswith(".gguf"):
        return True
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def gguf_source(path: str | os.PathLike) -> TensorSource:
    """A GGUF file's tensors under Hugging Face names, dequantized one at a time, with its tokenizer."""
    checkpoint = GGUFCheckpoint(path)
    config = checkpoint.config()
    keys = checkpoint.keys()
    specs = {key: (checkpoint.shape(key), checkpoint.dtype(key)) for key in keys}
    json_files: dict[str, dict[str, Any]] = {
        "generation_config.json": {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}}
    if checkpoint.gguf_metadata.get("tokenizer.ggml.model", NO_VOCAB) != NO_VOCAB:
        json_files.update(tokenizer_files(gguf_tokenizer(checkpoint)))
    return TensorSource(config, specs, lambda: ((key, checkpoint.read(key)) for key in keys), {}, json_files)


def write_gguf(source: TensorSource, path: str, options: WriteOptions) -> None:
    """Write the source as one GGUF file at path, matrices in options.gguf_type."""
    import gguf

    if options.gguf_type not in GGUF_TYPES:
        raise ConversionError(f"GGUF type {options.gguf_type!r} is not one this writer quantizes; expected one of "
                              f"{GGUF_TYPES}")
    config = source.config
    rope_freqs = _rope_freqs(config)
    writer = gguf.GGUFWriter(path, "llama")
    _add_model_metadata(writer, config, options.gguf_type)
    for key, value in _tokenizer_metadata(source).items():
        _add_value(writer, key, value)
    plan = {gguf_key(key): (key, shape, _ggml_type(shape, options.gguf_type)) for key, (shape, _) in
            source.specs.items()}
    for name, (_, shape, ggml_type) in plan.items():
        writer.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, ggml_type), raw_dtype=ggml_type)
    if rope_freqs is not None:
        writer.add_tensor_info(ROPE_FREQS, rope_freqs.shape, rope_freqs.dtype, rope_freqs.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for key, array in source.tensors():
        name = gguf_key(key)
        _, shape, ggml_type = plan[name]
        heads = hf_rotary_rows_heads(key, config.num_attention_heads, config.num_key_value_heads)
        if heads is not None:
            array = interleaved_from_rotate_half(array, heads)
        writer.write_tensor_data(_encoded(array, ggml_type))
    if rope_freqs is not None:
        writer.write_tensor_data(rope_freqs)
    writer.close()


def _ggml_type(shape: tuple[int, ...], requested: str):
    """The GGML type of one tensor: float32 for 1-D ones, else the requested type, or f16 where the
    rows do not split into the requested type's blocks."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

    if len(shape) == 1:
        return T.F32
    ggml_type = T[requested.upper()]
    if shape[-1] % GGML_QUANT_SIZES[ggml_type][0]:
        return T.F16
    return ggml_type


def _nbytes(shape: tuple[int, ...], ggml_type) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[ggml_type]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size


def _encoded(array: np.ndarray, ggml_type) -> np.ndarray:
    """The tensor as the bytes (or floats) GGUF stores for its type, by gguf's own quantizers."""
    import gguf
    from gguf import GGMLQuantizationType as T

    if ggml_type == T.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if ggml_type == T.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quantize(np.ascontiguousarray(array, dtype=np.float32), ggml_type)


def _add_model_metadata(writer: Any, config: LlamaConfig, gguf_type: str) -> None:
    writer.add_name("llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPES[gguf_type])
    scaling = config.rope_scaling or {}
    if config.rope_type in ("linear", "yarn"):
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType(config.rope_type))
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        if config.rope_type == "yarn":
            writer.add_rope_scaling_orig_ctx_len(config.rope_original_length)


def _rope_freqs(config: LlamaConfig) -> np.ndarray | None:
    """llama.cpp's rope_freqs tensor (per-frequency divisors) for scalings it has no key for: llama3,
    and longrope whose two factor lists agree (what GGUF reading makes of rope_freqs)."""
    scaling = config.rope_scaling or {}
    if config.rope_type in ("default", "linear", "yarn"):
        return None
    if config.rope_type == "llama3":
        plain = static_inv_freq(config.replace(rope_scaling=None))
        return (plain / static_inv_freq(config)).astype(np.float32)
    if config.rope_type == "longrope" and scaling["short_factor"] == scaling["long_factor"] \
            and scaling.get("attention_factor", 1.0) == 1.0:
        return np.asarray(scaling["short_factor"], dtype=np.float32)
    raise ConversionError(f"rope_scaling rope_type {config.rope_type!r} has no GGUF (llama.cpp) form; "
                          "GGUF writes default, linear, yarn and llama3 RoPE")


def _tokenizer_metadata(source: TensorSource) -> dict[str, Any]:
    """tokenizer.* metadata of the tokenizer the source carries; without one, llama.cpp's "no_vocab"
    (it refuses a file with no tokenizer.ggml.model at all)."""
    with tempfile.TemporaryDirectory(prefix="llama-twin-tokenizer-") as folder:
        write_side_files(source, folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception:  # noqa: BLE001 - no tokenizer among the carried files: the GGUF gets none
            if any(name.startswith("tokenizer") for name in os.listdir(folder)):
                raise
            return {"tokenizer.ggml.model": NO_VOCAB}
        return gguf_tokenizer_metadata(tokenizer, source.config.vocab_size, _sentencepiece_scores(folder))


def _sentencepiece_scores(folder: str) -> dict[str, float] | None:
    """The piece scores of a sentencepiece tokenizer.model in folder (what llama.cpp's sentencepiece
    tokenizer merges by, as its own converter writes them), else None."""
    path = os.path.join(folder, "tokenizer.model")
    if not os.path.isfile(path) or detect_kind(path) != "sentencepiece":
        return None
    return {piece.piece: piece.score for piece in load_spm_proto(path).pieces}


def _add_value(writer: Any, key: str, value: Any) -> None:
    import gguf

    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif value and isinstance(value[0], float):
        writer.add_array(key, [float(v) for v in value])
    elif value and isinstance(value[0], int):
        writer.add_key_value(key, list(value), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
    else:
        writer.add_array(key, list(value))


FORMAT = Format("gguf", "a .gguf file", is_gguf_file, gguf_source, write_gguf, single_file=True)
