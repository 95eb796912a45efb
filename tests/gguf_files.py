"""GGUF files for the tests, written with the `gguf` package's own writer and quantizers from a saved
transformers checkpoint, independently of llama_twin's GGUF code: tensor names, llama.cpp's q/k row
permutation and the metadata are spelled out here as llama.cpp's convert_hf_to_gguf.py writes them.

The gguf package quantizes Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 but has no K-quant encoder, so the
K-quant files get random blocks with small finite scales: the oracle is then transformers' GGUF
loader on the same file, not the original weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
               "post_attention_layernorm": "ffn_norm"}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
TENSOR_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# Byte offsets of the float16 scales in each K-quant block (ggml-common.h), set to small finite values.
K_SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def gguf_name(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "model" and parts[1] == "layers":
        return f"blk.{parts[2]}.{LAYER_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"
    return f"{TOP_NAMES['.'.join(parts[:-1])]}.{parts[-1]}"


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: rotate_half rows to interleaved pairs."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def random_k_blocks(rows: int, columns: int, type_name: str, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks (uint8, rows x bytes) whose float16 scales are finite and sized so that
    the weights have a standard deviation near 0.05 (logits of order one)."""
    import gguf

    quant = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[quant]
    blocks = rng.integers(0, 256, size=(rows, columns // block, size), dtype=np.uint8)

    def set_scales(scale_of) -> None:
        for offset in K_SCALE_OFFSETS[type_name]:
            field = blocks[:, :, offset:offset + 2].copy().view(np.float16)
            blocks[:, :, offset:offset + 2] = scale_of(field).astype(np.float16).view(np.uint8)

    set_scales(lambda _: rng.uniform(0.5, 1.0, size=(rows, columns // block, 1)))
    spread = float(np.std(gguf.dequantize(blocks.reshape(rows, -1), quant)))
    set_scales(lambda field: field.astype(np.float32) * (0.05 / spread))
    return blocks.reshape(rows, -1)


def write_gguf(folder: str | Path, path: str | Path, tensor_type: str = "F32", seed: int = 0,
               tokenizer: dict | None = None) -> Path:
    """Write the transformers checkpoint in folder as a llama GGUF at path: 2-D tensors in tensor_type
    (1-D ones in F32, as llama.cpp keeps norms), tokenizer metadata from the given dict of
    gguf keys (tokenizer.ggml.*) if any."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((Path(folder) / "config.json").read_text())
    tensors = load_file(str(Path(folder) / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value in (tokenizer or {}).items():
        _add_metadata(writer, key, value)
    rng = np.random.default_rng(seed)
    quant = gguf.GGMLQuantizationType[tensor_type]
    for key in tensors:
        array = tensors[key].astype(np.float32)
        if key.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, heads)
        elif key.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, kv_heads)
        name = gguf_name(key)
        if array.ndim == 1 or tensor_type == "F32":
            writer.add_tensor(name, np.ascontiguousarray(array))
        elif tensor_type == "F16":
            writer.add_tensor(name, array.astype(np.float16))
        elif tensor_type in K_SCALE_OFFSETS:
            writer.add_tensor(name, random_k_blocks(*array.shape, tensor_type, rng), raw_dtype=quant)
        else:
            writer.add_tensor(name, gguf.quantize(array, quant), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _add_metadata(writer, key: str, value) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))
