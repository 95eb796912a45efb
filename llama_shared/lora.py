"""LoRA adapters in Hugging Face PEFT's format: the settings, the file layout, the key names and the
checks both twins run before they build anything.

A LoRA adapter adds to a linear layer y = x W^T + b the low-rank update scaling * B(A(dropout(x))),
A (r, in) and B (out, r) in PEFT's [out, in] orientation, scaling = lora_alpha / r (rsLoRA:
lora_alpha / sqrt(r)). PEFT initialises A kaiming-uniform with a = sqrt(5), i.e. uniform in
+-1/sqrt(in), and B with zeros, so a new adapter starts as the identity. A folder holds
adapter_config.json and adapter_model.safetensors, whose keys are the model's state-dict keys under
"base_model.model." with the layer's name followed by lora_A.weight / lora_B.weight.

llama-twin applies one adapter to the same modules of every layer (the layers can then be scanned);
PEFT settings that need more (DoRA, per-layer ranks, bias training, modules_to_save, ...) are refused
with the field named.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from llama_shared.checkpoints import SafetensorsFile, SafetensorsWriter
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError
from llama_shared.naming import flatten_tree, unflatten_tree
from llama_shared.quantization import DEFAULT_MODULES, QuantizationConfig, config_quantization, quantize

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_TYPE = "LORA"
TASK_TYPE = "CAUSAL_LM"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the model as base_model.model
ADAPTER_MODULES = ("lora_A", "lora_B")
TARGETS = DEFAULT_MODULES  # the linear layers an adapter can target, by leaf name
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output layer
CONFIG_KEY = "lora_adapter"  # where a model's module finds its adapter, in LlamaConfig.extra (never config.json)
_BASE_WEIGHT = re.compile(r"^(.*)\.base_layer\.weight$")  # PEFT also saves a targeted lm_head's own weight

# PEFT fields whose other values change what an adapter computes in ways llama-twin does not build.
_UNSUPPORTED = {
    "use_dora": (False, None), "bias": ("none", None), "fan_in_fan_out": (False, None),
    "layers_to_transform": (None, []), "layers_pattern": (None, [], ""), "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None), "modules_to_save": (None, []), "layer_replication": (None, []),
    "lora_bias": (False, None), "target_parameters": (None, []), "trainable_token_indices": (None, {}, []),
    "exclude_modules": (None, [], ""), "use_qalora": (False, None), "alora_invocation_tokens": (None, []),
    "use_bdlora": (None, False),
}


@dataclass(frozen=True)
class LoraConfig:
    """A LoRA adapter's settings, PEFT's LoraConfig fields of the same names.

    target_modules: leaf names of linear layers (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    down_proj, lm_head) or dotted suffixes of their names, PEFT's "all-linear", or a regular
    expression matched against whole module names (as PEFT does with a string).
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")
    use_rslora: bool = False
    base_model_name_or_path: str | None = None
    task_type: str = TASK_TYPE

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) \
                or not self.lora_alpha > 0:
            raise ConfigError(f"LoRA lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) \
                or not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"LoRA lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in
                                              ((self.target_modules,) if isinstance(self.target_modules, str)
                                               else self.target_modules)):
            raise ConfigError(f"LoRA target_modules must be module names or one regular expression, "
                              f"got {self.target_modules!r}")
        if not isinstance(self.use_rslora, bool):
            raise ConfigError(f"LoRA use_rslora must be true or false, got {self.use_rslora!r}")
        if self.task_type not in (TASK_TYPE, None):
            raise ConfigError(f"LoRA task_type {self.task_type!r}: llama-twin's adapters are for "
                              f"{TASK_TYPE} (a causal language model)")

    @property
    def scaling(self) -> float:
        """The factor of the update B A x: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def resolve(self, config: LlamaConfig) -> "LoraConfig":
        """A copy whose target_modules are the sorted leaf names the targets select in this model.

        Raises ConfigError for a target that names no linear layer of a Llama model (an adapter made
        for another architecture) or a selection that covers a module in some layers only.
        """
        keys = linear_module_keys(config)
        if self.target_modules == ALL_LINEAR:
            chosen = [k for k in keys if leaf(k) != "lm_head"]
        elif isinstance(self.target_modules, str):
            chosen = [k for k in keys if re.fullmatch(self.target_modules, k)]
            if not chosen:
                raise ConfigError(f"LoRA target_modules {self.target_modules!r} matches no linear layer of a "
                                  f"Llama model (module names such as {keys[0]!r}, 'lm_head'){self._made_for()}")
        else:
            chosen = []
            for target in self.target_modules:
                matched = [k for k in keys if k == target or k.endswith("." + target)]
                if not matched:
                    raise ConfigError(f"LoRA target module {target!r} is not a linear layer of a Llama model "
                                      f"(expected names among {list(TARGETS)}){self._made_for()}")
                chosen += matched
        names = sorted({leaf(k) for k in chosen})
        for name in names:
            partial = sorted({k for k in keys if leaf(k) == name} - set(chosen))
            if partial:
                raise ConfigError(f"LoRA target_modules {self.target_modules!r} select {name} in some layers but "
                                  f"not in {partial[0]!r}; llama-twin applies an adapter to every layer")
        return replace(self, target_modules=tuple(names))

    def targets(self, module: str) -> bool:
        """Whether the resolved adapter covers the linear layer of that leaf name."""
        return module in self.target_modules

    def _made_for(self) -> str:
        return f" (the adapter was made for {self.base_model_name_or_path})" if self.base_model_name_or_path else ""

    # ----------------------------------------------------------------------------------------
    # adapter_config.json

    def to_dict(self) -> dict[str, Any]:
        """adapter_config.json as PEFT writes it (the fields PEFT needs; it fills in the rest)."""
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return {"peft_type": PEFT_TYPE, "task_type": self.task_type, "base_model_name_or_path":
                self.base_model_name_or_path, "r": self.r, "lora_alpha": self.lora_alpha,
                "lora_dropout": self.lora_dropout, "target_modules": targets, "use_rslora": self.use_rslora,
                "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
                "modules_to_save": None, "use_dora": False, "revision": None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> "LoraConfig":
        """Parse adapter_config.json's content; errors name the source and the field."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("peft_type") != PEFT_TYPE:
            raise ConfigError(f"{source}: peft_type {data.get('peft_type')!r} is not a LoRA adapter "
                              f"(expected {PEFT_TYPE!r})")
        for name, allowed in _UNSUPPORTED.items():
            if name in data and data[name] not in allowed:
                raise ConfigError(f"{source}: {name}={data[name]!r} is not supported by llama-twin's LoRA "
                                  f"(supported: {allowed[0]!r})")
        if "target_modules" not in data or "r" not in data:
            raise ConfigError(f"{source}: r and target_modules are required")
        targets = data["target_modules"]
        try:
            return cls(r=data["r"], lora_alpha=data.get("lora_alpha", 8), lora_dropout=data.get("lora_dropout", 0.0),
                       target_modules=targets if isinstance(targets, str) else tuple(targets or ()),
                       use_rslora=data.get("use_rslora", False),
                       base_model_name_or_path=data.get("base_model_name_or_path"),
                       task_type=data.get("task_type", TASK_TYPE))
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "LoraConfig":
        """Read adapter_config.json from an adapter folder."""
        path = os.path.join(directory, CONFIG_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"no {CONFIG_FILE} in {directory}: not a PEFT adapter folder") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data, path)


def leaf(key: str) -> str:
    """The leaf name of a module key ("model.layers.0.self_attn.q_proj" -> "q_proj")."""
    return key.rpartition(".")[2]


def linear_module_keys(config: LlamaConfig) -> list[str]:
    """The names of a Llama causal LM's linear layers, as in transformers' state dict (lm_head too)."""
    per_layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    return [f"model.layers.{i}.{name}" for i in range(config.num_hidden_layers) for name in per_layer] + ["lm_head"]


def init_bound(in_features: int) -> float:
    """Bound of lora_A's uniform initialisation: PEFT's kaiming_uniform_(a=sqrt(5)) gives 1/sqrt(in)."""
    return 1.0 / math.sqrt(in_features)


def is_adapter_path(path: Iterable[str]) -> bool:
    """True for a parameter of an adapter (a lora_A or lora_B under some linear layer)."""
    return any(part in ADAPTER_MODULES for part in path)


def split_adapter(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(adapter params, base params) of a nested param dict, each keeping its paths."""
    flat = flatten_tree(params)
    return (unflatten_tree({p: v for p, v in flat.items() if is_adapter_path(p)}),
            unflatten_tree({p: v for p, v in flat.items() if not is_adapter_path(p)}))


def join_params(base: Mapping[str, Any], adapter: Mapping[str, Any]) -> dict[str, Any]:
    """The nested param dict holding both (the inverse of split_adapter)."""
    return unflatten_tree({**flatten_tree(base), **flatten_tree(adapter)})


# ------------------------------------------------------------------------------------------------
# The adapter a model's modules are built with


def with_adapter(config: LlamaConfig, adapter: LoraConfig | None) -> LlamaConfig:
    """A copy of config whose modules carry the adapter (resolved against it), or none (adapter None)."""
    extra = {k: v for k, v in config.extra.items() if k != CONFIG_KEY}
    if adapter is not None:
        extra[CONFIG_KEY] = adapter.resolve(config).to_dict()
    return replace(config, extra=extra)


def config_adapter(config: LlamaConfig) -> LoraConfig | None:
    """The adapter a module's config carries (None: none)."""
    data = config.extra.get(CONFIG_KEY)
    return None if data is None else LoraConfig.from_dict(data, "the module's adapter")


# ------------------------------------------------------------------------------------------------
# Adapter folders


def peft_key(key: str) -> str:
    """PEFT's key for a model state-dict key of an adapter tensor."""
    return PEFT_PREFIX + key


def model_key(key: str, source: str) -> str:
    """The model state-dict key of one of PEFT's keys (the inverse of peft_key)."""
    if not key.startswith(PEFT_PREFIX):
        raise CheckpointError(f"tensor {key!r} in {source} is not a PEFT adapter key (expected the prefix "
                              f"{PEFT_PREFIX!r})")
    return key[len(PEFT_PREFIX):]


@dataclass
class AdapterFiles:
    """An adapter folder as read: its settings (resolved), its tensors by model state-dict key, and the base
    weights PEFT saved beside them (a targeted lm_head's), by the state-dict key of that weight."""

    config: LoraConfig
    tensors: dict[str, np.ndarray]
    base_weights: dict[str, np.ndarray]
    directory: str


def read_adapter(directory: str | os.PathLike, model_config: LlamaConfig) -> AdapterFiles:
    """Read a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) for a model of
    model_config: the settings are resolved against the model (resolve's errors) before any tensor is read."""
    directory = os.fspath(directory)
    config = LoraConfig.from_pretrained(directory).resolve(model_config)
    path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.exists(path):
        other = [n for n in ("adapter_model.bin",) if os.path.exists(os.path.join(directory, n))]
        hint = f" ({other[0]} is a pickle; llama-twin loads safetensors only)" if other else ""
        raise CheckpointError(f"no {WEIGHTS_FILE} in {directory}{hint}")
    file = SafetensorsFile(path)
    tensors, base_weights = {}, {}
    for key in file.keys():
        name = model_key(key, path)
        base = _BASE_WEIGHT.match(name)
        if base:
            base_weights[f"{base.group(1)}.weight"] = file.read(key)
        else:
            tensors[name] = file.read(key)
    return AdapterFiles(config, tensors, base_weights, directory)


def check_adapter_tensors(expected: Mapping[str, tuple[int, ...]], files: AdapterFiles) -> None:
    """Raise CheckpointError unless the folder holds exactly the expected adapter tensors, shapes
    included (expected: {state-dict key: PEFT's [out, in] shape} of the model the adapter goes on)."""
    source = os.path.join(files.directory, WEIGHTS_FILE)
    unexpected = sorted(set(files.tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source} holds {peft_key(unexpected[0])!r}, which this model has no place for "
                              f"({len(unexpected)} such tensors; is the adapter for another base model?)")
    missing = sorted(set(expected) - set(files.tensors))
    if missing:
        raise CheckpointError(f"{source} lacks {peft_key(missing[0])!r} ({len(missing)} adapter tensors missing "
                              f"for target_modules {list(files.config.target_modules)})")
    for key, shape in expected.items():
        stored = tuple(files.tensors[key].shape)
        if stored != tuple(shape):
            raise CheckpointError(f"tensor {peft_key(key)!r} in {source} has shape {stored}, but the base model "
                                  f"expects {tuple(shape)} (an adapter for another base model, or another rank)")


def check_base_weight(key: str, stored: np.ndarray, actual: Mapping[str, np.ndarray],
                      quantization: QuantizationConfig | None, directory: str) -> None:
    """Raise CheckpointError when a base weight PEFT saved with the adapter differs from the model's
    (PEFT would put it in place of the model's; llama-twin keeps the base and asks for the right one).

    actual holds the model's tensors of that layer: {"weight": ...}, or its quantized tensors, which
    the stored weight must quantize to.
    """
    expected = {"weight": stored}
    if quantization is not None and stored.ndim == 2 and stored.shape[1] % (quantization.group_size or 2) == 0:
        expected = quantize(stored, quantization, actual["scales"].dtype, key)
    same = set(expected) == set(actual) and all(
        expected[k].shape == actual[k].shape and np.array_equal(expected[k], actual[k].astype(expected[k].dtype))
        for k in expected)
    if not same:
        raise CheckpointError(f"{os.path.join(directory, WEIGHTS_FILE)} carries its own {key!r} (shape "
                              f"{tuple(stored.shape)}), which differs from the base model's: load the base model "
                              f"the adapter was trained on")


def check_mergeable(adapter: LoraConfig, config: LlamaConfig) -> None:
    """Refuse a merge that would change more than the adapted layers or requantize the base."""
    if adapter.targets("lm_head") and config.tie_word_embeddings:
        raise ConfigError("an adapter on a tied lm_head cannot be merged: the merged weight would change the "
                          "input embeddings too")
    if config_quantization(config) is not None:
        raise ConfigError("an adapter cannot be merged into a quantized base (it would be requantized): load "
                          "the float base with the adapter (from_pretrained(..., adapter=...)) and merge that")


def write_adapter(directory: str | os.PathLike, config: LoraConfig, tensors: Iterable[tuple[str, np.ndarray]],
                  base_model_name_or_path: str | None = None) -> None:
    """Write adapter_config.json and adapter_model.safetensors (tensors by model state-dict key, PEFT's
    orientation) into directory, through a temporary folder beside it: existing adapter files are
    never written over. base_model_name_or_path (where the model came from) fills the config's field
    when it has none."""
    if config.base_model_name_or_path is None and base_model_name_or_path:
        config = replace(config, base_model_name_or_path=base_model_name_or_path)
    directory = os.fspath(directory)
    taken = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if os.path.exists(os.path.join(directory, n))]
    if taken:
        raise FileExistsError(f"{os.path.join(directory, taken[0])} already exists; an adapter is never "
                              f"written over another")
    os.makedirs(directory, exist_ok=True)
    tensors = [(peft_key(key), np.ascontiguousarray(array)) for key, array in tensors]
    staging = tempfile.mkdtemp(prefix=".adapter-", dir=directory)
    try:
        with SafetensorsWriter(os.path.join(staging, WEIGHTS_FILE),
                               {k: (a.shape, a.dtype) for k, a in tensors}) as writer:
            for key, array in tensors:
                writer.write(key, array)
        with open(os.path.join(staging, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
    finally:
        for name in os.listdir(staging):
            os.remove(os.path.join(staging, name))
        os.rmdir(staging)
