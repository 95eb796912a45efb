"""LlamaConfig: the one model configuration both backends read, in Hugging Face's config.json format.

Every field of transformers' LlamaConfig is here with its default and meaning. It reads the
config.json written by transformers 4.x (``rope_theta`` + ``rope_scaling``) and by 5.x
(``rope_parameters``, and the legacy ``"type"`` key), and writes the 4.x form, which both load.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from llama_shared.checkpoints.hub import resolve_model_dir
from llama_shared.errors import ConfigError
from llama_shared.files import read_json
from llama_shared.presets import PRESETS

ACTIVATIONS = ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# Sizes stay below 2**31: token ids and positions are int32 on accelerators.
MAX_SIZE = 2**31 - 1

# Keys each rope_type needs in rope_scaling (beside rope_type) and the ones it may carry.
ROPE_REQUIRED_KEYS: dict[str, set[str]] = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor"},
    "longrope": {"short_factor", "long_factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}
ROPE_OPTIONAL_KEYS: dict[str, set[str]] = {
    "default": set(),
    "linear": set(),
    "dynamic": {"original_max_position_embeddings"},
    "yarn": {"attention_factor", "beta_fast", "beta_slow", "original_max_position_embeddings",
             "mscale", "mscale_all_dim", "truncate"},
    "longrope": {"attention_factor", "factor", "original_max_position_embeddings"},
    "llama3": set(),
}

# The 5.x rope_parameters dict carries rope_theta and, where it applies, partial_rotary_factor.
_ROPE_PARAMETER_GLOBALS = ("rope_theta", "partial_rotary_factor")


@dataclass
class LlamaConfig:
    """Hyper-parameters of a Llama model, field for field those of transformers' LlamaConfig.

    num_key_value_heads None means num_attention_heads (MHA); head_dim None means
    hidden_size // num_attention_heads. pretraining_tp is kept for round trips and does not change
    the math (transformers ignores it since 4.48 too). Fields a config.json carries that are not
    listed here are kept in ``extra`` and written back unchanged.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int = 1
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    head_dim: int | None = None
    # Fields of PretrainedConfig that the task heads read.
    num_labels: int = 2
    problem_type: str | None = None
    classifier_dropout: float | None = None
    torch_dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and _is_positive_int(self.hidden_size) and _is_positive_int(
                self.num_attention_heads):
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.rope_scaling is not None:
            self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)
        self.validate()

    def __hash__(self) -> int:
        """Hash of the config.json content, so a config can be a static jit argument and a Linen field."""
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # ----------------------------------------------------------------------------------------
    # Derived quantities

    @property
    def rope_type(self) -> str:
        """The rope_type in force ("default" without rope_scaling)."""
        return (self.rope_scaling or {}).get("rope_type", "default")

    @property
    def rope_original_length(self) -> int:
        """The pre-training length that llama3, yarn and longrope scale from, read as transformers 5
        reads it: a top-level original_max_position_embeddings (where Phi-3 keeps it) first, then the
        one in rope_scaling, then max_position_embeddings. (4.57 ignored the rope_scaling one for
        longrope; see docs/numerics.md.)"""
        top_level = self.extra.get("original_max_position_embeddings")
        return top_level or (self.rope_scaling or {}).get("original_max_position_embeddings") \
            or self.max_position_embeddings

    @property
    def num_key_value_groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """eos_token_id as a tuple, whether the file gave an int, a list or nothing."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Parameter count of the causal LM (tied embeddings counted once)."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias:
            attn += q + 2 * kv + h
        mlp = 3 * h * self.intermediate_size
        if self.mlp_bias:
            mlp += 2 * self.intermediate_size + h
        layer = attn + mlp + 2 * h
        total = self.num_hidden_layers * layer + h
        if include_embeddings:
            total += self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        elif not self.tie_word_embeddings:
            total += self.vocab_size * h
        return total

    # ----------------------------------------------------------------------------------------
    # Validation

    def validate(self) -> None:
        """Raise ConfigError naming the field when a value cannot describe a Llama model: every size a
        positive integer below 2**31, every real number finite and in its range (NaN and infinity
        never pass), every flag a boolean, every token id an integer."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                     "pretraining_tp", "num_labels"):
            _check_count(name, getattr(self, name))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config field 'num_attention_heads' ({self.num_attention_heads}) must be divisible by "
                f"'num_key_value_heads' ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"config field 'head_dim' must be even for rotary embeddings, got {self.head_dim}")
        _check_real("rms_norm_eps", self.rms_norm_eps, above=0)
        _check_real("rope_theta", self.rope_theta, above=1)
        _check_real("initializer_range", self.initializer_range, at_least=0)
        _check_real("attention_dropout", self.attention_dropout, at_least=0, at_most=1)
        if self.classifier_dropout is not None:
            _check_real("classifier_dropout", self.classifier_dropout, at_least=0, at_most=1)
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"config field 'hidden_act' must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"config field {name!r} must be true or false, got {getattr(self, name)!r}")
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise ConfigError(f"config field {name!r} must be an integer or null, got {value!r}")
        eos = self.eos_token_id
        if eos is not None and not _is_int(eos) and not (isinstance(eos, list) and all(_is_int(i) for i in eos)):
            raise ConfigError(f"config field 'eos_token_id' must be an integer or a list of integers, got {eos!r}")
        for name in ("problem_type", "torch_dtype"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"config field {name!r} must be a string or null, got {value!r}")
        if "original_max_position_embeddings" in self.extra:
            _check_count("original_max_position_embeddings", self.extra["original_max_position_embeddings"])
        if self.rope_scaling is not None:
            self._validate_rope_scaling()

    def _validate_rope_scaling(self) -> None:
        scaling, rope_type = self.rope_scaling, self.rope_type
        if not isinstance(rope_type, str) or rope_type not in ROPE_REQUIRED_KEYS:
            raise ConfigError(f"config field 'rope_scaling.rope_type' is {rope_type!r}; expected one of "
                              f"{sorted(ROPE_REQUIRED_KEYS)}")
        missing = ROPE_REQUIRED_KEYS[rope_type] - set(scaling)
        if missing:
            raise ConfigError(f"config field 'rope_scaling' with rope_type {rope_type!r} is missing required "
                              f"key(s) {sorted(missing)}")
        if "factor" in scaling and not (rope_type == "longrope" and scaling["factor"] is None):
            _check_real("rope_scaling.factor", scaling["factor"], at_least=1)
        if scaling.get("original_max_position_embeddings") is not None or rope_type == "llama3":
            _check_count("rope_scaling.original_max_position_embeddings",
                         scaling["original_max_position_embeddings"])
        for key in ("attention_factor", "beta_fast", "beta_slow"):
            if scaling.get(key) is not None:
                _check_real(f"rope_scaling.{key}", scaling[key], above=0)
        for key in ("mscale", "mscale_all_dim"):
            if scaling.get(key) is not None:
                _check_real(f"rope_scaling.{key}", scaling[key])
        if "truncate" in scaling and not isinstance(scaling["truncate"], bool):
            raise ConfigError(f"config field 'rope_scaling.truncate' must be true or false, "
                              f"got {scaling['truncate']!r}")
        if rope_type == "dynamic" and self.head_dim <= 2:
            raise ConfigError(f"config field 'head_dim' must exceed 2 for dynamic rope scaling, got {self.head_dim}")
        if rope_type == "longrope":
            half = self.head_dim // 2
            for key in ("short_factor", "long_factor"):
                value = scaling[key]
                if not isinstance(value, list) or len(value) != half or not all(_is_real(v) and v > 0 for v in value):
                    raise ConfigError(f"config field 'rope_scaling.{key}' must be a list of head_dim/2 = {half} "
                                      f"positive finite numbers, got {value!r}")
        if rope_type == "llama3":
            low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
            _check_real("rope_scaling.low_freq_factor", low, above=0)
            _check_real("rope_scaling.high_freq_factor", high, above=0)
            if not high > low:
                raise ConfigError(f"config field 'rope_scaling.high_freq_factor' ({high}) must exceed "
                                  f"'low_freq_factor' ({low})")

    # ----------------------------------------------------------------------------------------
    # config.json in and out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LlamaConfig":
        """Build from a config.json dict (transformers 4.x or 5.x layout)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object of fields, got a {type(data).__name__}")
        data = copy.deepcopy(data)
        rope_parameters = data.pop("rope_parameters", None)
        if rope_parameters is not None:
            if not isinstance(rope_parameters, dict):
                raise ConfigError(f"config field 'rope_parameters' must be an object, got {rope_parameters!r}")
            rope_parameters = dict(rope_parameters)
            for key in _ROPE_PARAMETER_GLOBALS:
                if key in rope_parameters:
                    data.setdefault(key, rope_parameters.pop(key))
            if data.get("rope_scaling") is None:
                scaling = _normalise_rope_scaling(rope_parameters)
                data["rope_scaling"] = None if scaling == {"rope_type": "default"} else scaling
        if "dtype" in data and "torch_dtype" not in data:
            data["torch_dtype"] = data.pop("dtype")
        if "id2label" in data and "num_labels" not in data:
            if not isinstance(data["id2label"], dict):
                raise ConfigError(f"config field 'id2label' must be an object, got {data['id2label']!r}")
            data["num_labels"] = len(data["id2label"])
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict, in the layout transformers 4.x writes (5.x reads it too)."""
        out: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        out.update(self.extra)
        for f in fields(self):
            if f.name != "extra":
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        if "id2label" not in out:
            out["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            out["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        del out["num_labels"]
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "LlamaConfig":
        """Read a config.json; errors name the file."""
        data = read_json(path, ConfigError)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write config.json (sorted keys, two-space indent, like transformers)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **overrides: Any) -> "LlamaConfig":
        """Read config.json from a local folder or a hub repo id, then apply keyword overrides."""
        directory = resolve_model_dir(path_or_repo_id, ("config.json",))
        config = cls.from_json_file(os.path.join(directory, "config.json"))
        return config.replace(**overrides) if overrides else config

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json into directory."""
        os.makedirs(directory, exist_ok=True)
        self.to_json_file(os.path.join(directory, "config.json"))

    def replace(self, **changes: Any) -> "LlamaConfig":
        """A validated copy with some fields changed."""
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "LlamaConfig":
        """One of the real Llama shapes by name (see PRESETS), with optional overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_count(name: str, value: Any) -> None:
    if not _is_positive_int(value) or value > MAX_SIZE:
        raise ConfigError(f"config field {name!r} must be a positive integer below 2**31, got {value!r}")


def _check_real(name: str, value: Any, above: float | None = None, at_least: float | None = None,
                at_most: float | None = None) -> None:
    """A finite number within the bounds given (above: exclusive; at_least, at_most: inclusive)."""
    bounds = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None else "",
              f"<= {at_most}" if at_most is not None else ""]
    if (not _is_real(value) or (above is not None and not value > above)
            or (at_least is not None and not value >= at_least) or (at_most is not None and not value <= at_most)):
        wanted = " and ".join(b for b in bounds if b)
        raise ConfigError(f"config field {name!r} must be a finite number{' ' + wanted if wanted else ''}, "
                          f"got {value!r}")


def _normalise_rope_scaling(scaling: Any) -> dict[str, Any]:
    """Copy the legacy "type" key to "rope_type", as transformers does."""
    if not isinstance(scaling, dict):
        raise ConfigError(f"config field 'rope_scaling' must be an object or null, got {scaling!r}")
    scaling = dict(scaling)
    if "rope_type" not in scaling:
        if "type" not in scaling:
            raise ConfigError("config field 'rope_scaling' needs a 'rope_type' (or legacy 'type') key")
        scaling["rope_type"] = scaling["type"]
    for key in _ROPE_PARAMETER_GLOBALS:
        scaling.pop(key, None)
    return scaling
