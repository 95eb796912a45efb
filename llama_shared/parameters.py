"""The tensors a config implies, and the check of a checkpoint against them.

model_tensors lists every parameter of a model class under Hugging Face's names, with the shape the
config gives it and the dtype it needs (any floating dtype, or exactly int8/uint8 for quantized
codes), from the config alone. check_tensors compares a checkpoint's names, shapes and dtypes with
that list at once, before anything is built, allocated or compiled: both twins call it first in
from_pretrained, and conversion calls it before writing, so a checkpoint that does not fit its
config fails in a moment, naming the tensor, instead of after minutes (or a crash) or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError
from llama_shared.naming import BASE_PREFIX, check_shape, checkpoint_key_map, hf_key_order, is_ignored_key
from llama_shared.quantization import config_quantization

# Task heads a checkpoint may lack (a base or causal-LM checkpoint loaded into a task model): they
# are initialised instead, as transformers does.
TASK_HEADS = ("score", "qa_outputs")
FLOAT_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16))
StoredSpecs = Mapping[str, tuple[tuple[int, ...], np.dtype]]
FLOAT_LEAVES = ("scales", "mins")  # quantized tensors in any floating dtype (the codes' dtype is exact)
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class TensorSpec:
    """A parameter's shape, and its dtype: None for any floating dtype, else exactly this one."""

    shape: tuple[int, ...]
    dtype: np.dtype | None = None


def model_tensors(config: LlamaConfig, model_class: str = "LlamaForCausalLM") -> dict[str, TensorSpec]:
    """{Hugging Face key: TensorSpec} of every parameter of model_class ("LlamaModel", "LlamaForCausalLM",
    ...) built from config, in transformers' order; a tied lm_head is not listed (it is the embedding)."""
    if model_class not in BASE_PREFIX:
        raise ConfigError(f"unknown model class {model_class!r}; expected one of {sorted(BASE_PREFIX)}")
    c, quantization = config, config_quantization(config)
    h, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    specs: dict[str, TensorSpec] = {}

    def linear(name: str, in_features: int, out_features: int, bias: bool = False) -> None:
        """A weight [out, in] (an embedding's [vocab, hidden] too), or its quantized tensors."""
        module = name.rsplit(".", 1)[-1]
        if quantization is not None and quantization.quantizes(module, c):
            for leaf, (shape, dtype) in quantization.tensor_specs(out_features, in_features, np.float32).items():
                specs[f"{name}.{leaf}"] = TensorSpec(shape, None if leaf in FLOAT_LEAVES else dtype)
        else:
            specs[f"{name}.weight"] = TensorSpec((out_features, in_features))
        if bias:
            specs[f"{name}.bias"] = TensorSpec((out_features,))

    base = BASE_PREFIX[model_class]
    prefix = f"{base}." if base else ""
    linear(f"{prefix}embed_tokens", h, c.vocab_size)
    for i in range(c.num_hidden_layers):
        layer = f"{prefix}layers.{i}"
        for name, size in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            linear(f"{layer}.self_attn.{name}", h, size, c.attention_bias)
        linear(f"{layer}.self_attn.o_proj", q, h, c.attention_bias)
        linear(f"{layer}.mlp.gate_proj", h, c.intermediate_size, c.mlp_bias)
        linear(f"{layer}.mlp.up_proj", h, c.intermediate_size, c.mlp_bias)
        linear(f"{layer}.mlp.down_proj", c.intermediate_size, h, c.mlp_bias)
        specs[f"{layer}.input_layernorm.weight"] = TensorSpec((h,))
        specs[f"{layer}.post_attention_layernorm.weight"] = TensorSpec((h,))
    specs[f"{prefix}norm.weight"] = TensorSpec((h,))
    if model_class == "LlamaForCausalLM" and not c.tie_word_embeddings:
        linear("lm_head", h, c.vocab_size)
    elif model_class == "LlamaForSequenceClassification":
        specs["score.weight"] = TensorSpec((c.num_labels, h))
    elif model_class == "LlamaForTokenClassification":
        specs.update({"score.weight": TensorSpec((c.num_labels, h)), "score.bias": TensorSpec((c.num_labels,))})
    elif model_class == "LlamaForQuestionAnswering":
        specs.update({"qa_outputs.weight": TensorSpec((2, h)), "qa_outputs.bias": TensorSpec((2,))})
    return specs


def model_class_of(config: LlamaConfig) -> str:
    """The model class config.json's architectures names, LlamaForCausalLM when it names none of ours."""
    architectures = config.extra.get("architectures")
    named = architectures[0] if isinstance(architectures, list) and architectures else None
    return named if isinstance(named, str) and named in BASE_PREFIX else "LlamaForCausalLM"


def checkpoint_specs(checkpoint: object) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of a Checkpoint (or anything with keys(), shape() and dtype())."""
    return {key: (tuple(checkpoint.shape(key)), np.dtype(checkpoint.dtype(key))) for key in checkpoint.keys()}


def check_tensors(stored: StoredSpecs, config: LlamaConfig, model_class: str, source: str,
                  exact: bool = False) -> dict[str, str | None]:
    """Check stored tensors ({key: (shape, dtype)}) against what config implies for model_class; return
    {model key: stored key, or None for a task head to initialise}.

    Every tensor the model needs must be present (a bare LlamaModel checkpoint serves a head model and
    the reverse, as in transformers), with the config's shape and a dtype that fits: floating for a
    float parameter (integer, boolean or float8 weights are never cast silently), exactly the
    quantized codes' dtype for those. exact (conversion) also refuses tensors the model does not have.
    Raises CheckpointError naming the tensor and source.
    """
    _check_layer_count(stored, config, source)
    expected = model_tensors(config, model_class)
    key_map = checkpoint_key_map(expected, stored, BASE_PREFIX[model_class])
    missing = [key for key, found in key_map.items() if found is None and key.split(".")[0] not in TASK_HEADS]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"tensor {missing[0]!r} is missing from the checkpoint at {source}{more}")
    for key, found in key_map.items():
        if found is None:
            continue
        shape, dtype = stored[found]
        check_shape(found, shape, expected[key].shape, source)
        wanted = expected[key].dtype
        if wanted is None and np.dtype(dtype) not in FLOAT_DTYPES:
            raise CheckpointError(f"tensor {found!r} in {source} is {np.dtype(dtype).name}, but the model needs "
                                  f"floating weights (float32, bfloat16, float16 or float64) there")
        if wanted is not None and np.dtype(dtype) != wanted:
            raise CheckpointError(f"tensor {found!r} in {source} is {np.dtype(dtype).name}, but the quantized "
                                  f"model needs {wanted.name} there")
    if exact:
        used = set(key_map.values())
        unused = sorted((k for k in stored if k not in used and not is_ignored_key(k)), key=hf_key_order)
        if unused:
            raise CheckpointError(f"tensor {unused[0]!r} in {source} is not part of the {model_class} its config "
                                  f"describes ({len(unused)} such tensor(s); num_hidden_layers "
                                  f"{config.num_hidden_layers})")
    return key_map


def _check_layer_count(stored: StoredSpecs, config: LlamaConfig, source: str) -> None:
    """Refuse a num_hidden_layers beyond the layers stored before listing the tensors it implies, which
    for a hostile config (2**31 layers) would take minutes and gigabytes."""
    present = {int(match.group(1)) for key in stored if (match := _LAYER.search(key))}
    stored_layers = next(i for i in range(len(present) + 1) if i not in present)
    if config.num_hidden_layers > stored_layers:
        held = f"layers 0 to {stored_layers - 1}" if stored_layers else "no decoder layer"
        raise CheckpointError(f"the config's num_hidden_layers is {config.num_hidden_layers}, but the checkpoint at "
                              f"{source} holds {held} (no tensor of layer {stored_layers})")
