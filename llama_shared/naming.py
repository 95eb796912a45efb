"""THE table of parameter names: Hugging Face state-dict keys, Flax tree paths and Meta keys.

Torch state-dict keys are Hugging Face's exactly. A Flax path is the same key split on dots,
with a linear layer's ``weight`` stored as a transposed ``kernel`` ([in, out]) and an
embedding's ``weight`` as ``embedding``, which are transformers' Flax paths. Meta's original
names, llama.cpp's GGUF names and the q/k row permutation between the interleaved RoPE layout
(Meta's and llama.cpp's) and Hugging Face's rotate_half layout live here too, so no converter
spells them again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from llama_shared.errors import CheckpointError

LINEAR_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                            "lm_head", "score", "qa_outputs", "lora_A", "lora_B"})  # lora_*: LoRA adapters
EMBEDDING_MODULES = frozenset({"embed_tokens"})

# The prefix under which each model class keeps its base LlamaModel (transformers' base_model_prefix
# is "model" except for question answering, which kept "transformer" for backward compatibility).
BASE_PREFIX = {"LlamaModel": "", "LlamaForCausalLM": "model", "LlamaForSequenceClassification": "model",
               "LlamaForTokenClassification": "model", "LlamaForQuestionAnswering": "transformer"}

# Keys found in old checkpoints that hold nothing a model needs.
IGNORED_KEY_PATTERNS = (re.compile(r"(^|\.)rotary_emb\.inv_freq$"), re.compile(r"^rope\.freqs$"))


def flax_path(key: str) -> tuple[tuple[str, ...], bool]:
    """Flax tree path for a Hugging Face key, and whether the tensor is transposed on the way."""
    *modules, leaf = key.split(".")
    module = modules[-1] if modules else ""
    if leaf == "weight" and module in LINEAR_MODULES:
        return (*modules, "kernel"), True
    if leaf == "weight" and module in EMBEDDING_MODULES:
        return (*modules, "embedding"), False
    return (*modules, leaf), False


def hf_key(path: Iterable[str]) -> tuple[str, bool]:
    """Hugging Face key for a Flax tree path, and whether the tensor is transposed on the way."""
    *modules, leaf = tuple(path)
    if leaf == "kernel":
        return ".".join((*modules, "weight")), True
    if leaf == "embedding":
        return ".".join((*modules, "weight")), False
    return ".".join((*modules, leaf)), False


def flatten_tree(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dict -> {path tuple: leaf}."""
    flat: dict[tuple[str, ...], Any] = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, (*prefix, name)))
        else:
            flat[(*prefix, name)] = value
    return flat


def unflatten_tree(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """{path tuple: leaf} -> nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def is_ignored_key(key: str) -> bool:
    """True for buffers old checkpoints carry that no model reads (rotary inv_freq, rope.freqs)."""
    return any(p.search(key) for p in IGNORED_KEY_PATTERNS)


def checkpoint_key_map(expected: Iterable[str], available: Iterable[str],
                       model_prefix: str) -> dict[str, str | None]:
    """Map each key a model expects to the checkpoint key that holds it (None: not present).

    A head model loads a bare LlamaModel checkpoint and the reverse, by adding or stripping the
    base-model prefix ("model." or "transformer."), as transformers does.
    """
    available = {k for k in available if not is_ignored_key(k)}
    prefixes = {p for p in BASE_PREFIX.values() if p}
    mapping: dict[str, str | None] = {}
    for key in expected:
        candidates = [key]
        if model_prefix and key.startswith(model_prefix + "."):
            candidates.append(key[len(model_prefix) + 1:])
            candidates += [f"{p}.{key[len(model_prefix) + 1:]}" for p in prefixes]
        elif not model_prefix:
            candidates += [f"{p}.{key}" for p in prefixes]
        mapping[key] = next((c for c in candidates if c in available), None)
    return mapping


def check_shape(key: str, shape: tuple[int, ...], expected: tuple[int, ...], source: str) -> None:
    """Raise CheckpointError naming the tensor when its shape disagrees with the config."""
    if tuple(shape) != tuple(expected):
        raise CheckpointError(f"tensor {key!r} in {source} has shape {tuple(shape)}, but the config "
                              f"expects {tuple(expected)}")


# ------------------------------------------------------------------------------------------------
# Meta's original layout

_META_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_META_TOP_NAMES = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}
_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_META_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")


def meta_key(key: str) -> str:
    """Meta's name for a Hugging Face LlamaForCausalLM key."""
    return _renamed(key, "layers", _META_LAYER_NAMES, _META_TOP_NAMES, "Meta's checkpoint layout")


def _renamed(key: str, layers: str, layer_names: dict[str, str], top_names: dict[str, str], layout: str) -> str:
    """A Hugging Face key in another layout: layers.N / blk.N plus the layer's module name there."""
    match = _HF_LAYER_RE.match(key)
    if match:
        layer, module, leaf = match.groups()
        if module in layer_names:
            return f"{layers}.{layer}.{layer_names[module]}.{leaf}"
    module, _, leaf = key.rpartition(".")
    if module in top_names:
        return f"{top_names[module]}.{leaf}"
    raise CheckpointError(f"tensor {key!r} has no counterpart in {layout}")


def hf_key_from_meta(key: str) -> str:
    """Hugging Face's name for a Meta key."""
    match = _META_LAYER_RE.match(key)
    if match:
        layer, module, leaf = match.groups()
        for hf, meta in _META_LAYER_NAMES.items():
            if meta == module:
                return f"model.layers.{layer}.{hf}.{leaf}"
    module, _, leaf = key.rpartition(".")
    for hf, meta in _META_TOP_NAMES.items():
        if meta == module:
            return f"{hf}.{leaf}"
    raise CheckpointError(f"tensor {key!r} is not a known Meta Llama parameter")


def rotary_rows_heads(meta_name: str, num_heads: int, num_kv_heads: int) -> int | None:
    """The head count by which a Meta tensor's rows are permuted between the two RoPE layouts:
    num_heads for wq, num_kv_heads for wk (the GQA pitfall), None for every other tensor."""
    if meta_name.endswith("attention.wq.weight"):
        return num_heads
    if meta_name.endswith("attention.wk.weight"):
        return num_kv_heads
    return None


def rotate_half_from_interleaved(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Permute q/k rows (or a bias) from Meta's interleaved pairs to rotate_half halves, per head.

    Within a head, Hugging Face row j*(D/2)+i holds Meta row 2i+j. Use num_heads =
    num_key_value_heads for k_proj.
    """
    rows = w.shape[0]
    head_dim = rows // num_heads
    rest = w.shape[1:]
    return w.reshape(num_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def interleaved_from_rotate_half(w: np.ndarray, num_heads: int) -> np.ndarray:
    """The inverse of rotate_half_from_interleaved (Hugging Face to Meta)."""
    rows = w.shape[0]
    head_dim = rows // num_heads
    rest = w.shape[1:]
    return w.reshape(num_heads, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


# fairscale's split dimension of each Meta tensor across model-parallel files ([out, in] layout):
# ColumnParallelLinear splits outputs (0), RowParallelLinear inputs (1); None is replicated (norms).
META_SPLIT_DIMS = {
    "attention.wq": 0, "attention.wk": 0, "attention.wv": 0, "attention.wo": 1,
    "feed_forward.w1": 0, "feed_forward.w3": 0, "feed_forward.w2": 1,
    "attention_norm": None, "ffn_norm": None, "norm": None, "output": 0,
}
# Llama 1/2 split the embedding along its width (ParallelEmbedding), Llama 3 along the vocabulary
# (VocabParallelEmbedding); Llama 3's 128256-token vocabulary tells them apart.
LLAMA3_MIN_VOCAB = 128000


def meta_split_dim(key: str, vocab_size: int) -> int | None:
    """The dimension along which a Meta tensor is split across model-parallel files (None: replicated)."""
    module = key.rsplit(".", 1)[0]
    if module == "tok_embeddings":
        return 0 if vocab_size >= LLAMA3_MIN_VOCAB else 1
    module = module.split(".", 2)[-1] if module.startswith("layers.") else module
    if module not in META_SPLIT_DIMS:
        raise CheckpointError(f"tensor {key!r} is not a known Meta Llama parameter")
    return META_SPLIT_DIMS[module]


# ------------------------------------------------------------------------------------------------
# llama.cpp's GGUF names (its q/k rows are interleaved like Meta's)

_GGUF_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.down_proj": "ffn_down",
    "mlp.up_proj": "ffn_up",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GGUF_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_key(key: str) -> str:
    """llama.cpp's GGUF name for a Hugging Face LlamaForCausalLM key."""
    return _renamed(key, "blk", _GGUF_LAYER_NAMES, _GGUF_TOP_NAMES, "llama.cpp's GGUF layout")


def hf_rotary_rows_heads(key: str, num_heads: int, num_kv_heads: int) -> int | None:
    """The head count by which a Hugging Face q/k weight or bias is permuted between the two RoPE
    layouts (num_kv_heads for k_proj), None for every other tensor."""
    if key.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return num_heads
    if key.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return num_kv_heads
    return None


def causal_lm_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """{Hugging Face key: shape} of every LlamaForCausalLM tensor of a LlamaConfig, in transformers'
    order (no lm_head when the embeddings are tied)."""
    c = config
    q, kv, h, ff = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.hidden_size, \
        c.intermediate_size
    shapes = {"model.embed_tokens.weight": (c.vocab_size, h)}
    for i in range(c.num_hidden_layers):
        layer = f"model.layers.{i}."
        shapes.update({layer + "self_attn.q_proj.weight": (q, h), layer + "self_attn.k_proj.weight": (kv, h),
                       layer + "self_attn.v_proj.weight": (kv, h), layer + "self_attn.o_proj.weight": (h, q),
                       layer + "mlp.gate_proj.weight": (ff, h), layer + "mlp.up_proj.weight": (ff, h),
                       layer + "mlp.down_proj.weight": (h, ff), layer + "input_layernorm.weight": (h,),
                       layer + "post_attention_layernorm.weight": (h,)})
        if c.attention_bias:
            shapes.update({layer + "self_attn.q_proj.bias": (q,), layer + "self_attn.k_proj.bias": (kv,),
                           layer + "self_attn.v_proj.bias": (kv,), layer + "self_attn.o_proj.bias": (h,)})
        if c.mlp_bias:
            shapes.update({layer + "mlp.gate_proj.bias": (ff,), layer + "mlp.up_proj.bias": (ff,),
                           layer + "mlp.down_proj.bias": (h,)})
    shapes["model.norm.weight"] = (h,)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, h)
    return dict(sorted(shapes.items(), key=lambda item: hf_key_order(item[0])))


def hf_key_order(key: str) -> tuple:
    """Sort key for Hugging Face names in transformers' order: embeddings, layers numerically, norm, heads."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))
