"""GenerationConfig and the framework-free rules of decoding, shared by both backends.

Defaults, field names and the generation_config.json format are transformers'. Every argument is
validated here, on the host, before a backend traces or compiles anything; the order in which the
logits processors run (transformers' order) and the length buckets that keep compiled shapes few
are decided here too.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from llama_shared.config import LlamaConfig
from llama_shared.errors import GenerationError
from llama_shared.files import read_json

GENERATION_CONFIG_FILE = "generation_config.json"

# transformers' _get_logits_processor order: processors first, then (when sampling) the warpers.
PROCESSOR_ORDER = ("repetition_penalty", "min_new_tokens", "temperature", "top_k", "top_p", "min_p")
SAMPLING_ONLY = frozenset({"temperature", "top_k", "top_p", "min_p"})

_NULL_MEANS_DEFAULT = frozenset({"temperature", "top_p", "repetition_penalty", "max_length", "min_length", "do_sample"})

# Prompt and cache lengths round up to these (then to multiples of the last), so compiled shapes repeat.
LENGTH_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode: transformers' GenerationConfig fields for Llama, with its defaults.

    max_new_tokens wins over max_length (the total length, prompt included). top_k 0 or None and
    top_p 1.0 switch those filters off; min_p None switches it off. eos_token_id may be a list
    (Llama 3 instruct stops on any of them). Fields of a generation_config.json not listed here are
    kept in ``extra`` and written back unchanged.
    """

    max_length: int = 20
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------
    # Construction and files

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "generation config") -> "GenerationConfig":
        """Known fields from the dict, the rest kept in extra. A null temperature, top_p,
        repetition_penalty, max_length, min_length or do_sample means the default (as in transformers)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in values.items() if not (v is None and k in _NULL_MEANS_DEFAULT)}
        if "pad_token_id" in values:
            values["pad_token_id"] = _pad_or_none(values["pad_token_id"])
        if isinstance(values.get("eos_token_id"), list) and len(values["eos_token_id"]) == 1:
            values["eos_token_id"] = values["eos_token_id"][0]
        try:
            return cls(**{k: v for k, v in values.items() if k in known},
                       extra={k: v for k, v in values.items() if k not in known})
        except GenerationError as e:
            raise GenerationError(f"{source}: {e}") from None

    @classmethod
    def from_model_config(cls, config: LlamaConfig) -> "GenerationConfig":
        """transformers' fallback when a checkpoint has no generation_config.json: the config's token ids."""
        return cls(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                   pad_token_id=_pad_or_none(config.pad_token_id))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "GenerationConfig":
        """Read directory/generation_config.json."""
        path = os.path.join(directory, GENERATION_CONFIG_FILE)
        values = read_json(path, GenerationError)
        if not isinstance(values, dict):
            raise GenerationError(f"{path} must hold a JSON object, found {type(values).__name__}")
        return cls.from_dict(values, source=path)

    @classmethod
    def for_model(cls, directory: str | os.PathLike, config: LlamaConfig) -> "GenerationConfig":
        """The checkpoint's generation_config.json if it has one, else the model config's token ids."""
        if os.path.exists(os.path.join(directory, GENERATION_CONFIG_FILE)):
            return cls.from_pretrained(directory)
        return cls.from_model_config(config)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults, plus extra (transformers' use_diff form)."""
        defaults = GenerationConfig()
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "extra" and getattr(self, f.name) != getattr(defaults, f.name)}
        return {**self.extra, **out}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write directory/generation_config.json (transformers reads it unchanged)."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, GENERATION_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    def update(self, **changes: Any) -> "GenerationConfig":
        """A copy with the given fields changed; None values mean "not given" and are skipped."""
        known = {f.name for f in fields(self)} - {"extra"}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise GenerationError(f"unknown generation argument(s) {unknown}; expected some of {sorted(known)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    # ------------------------------------------------------------------------------------------
    # Validation

    def validate(self) -> None:
        """Raise GenerationError naming the field and the accepted range for any bad value."""
        _check_int("max_length", self.max_length, minimum=1)
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1, optional=True)
        _check_int("min_length", self.min_length, minimum=0)
        _check_int("min_new_tokens", self.min_new_tokens, minimum=0, optional=True)
        _check_int("top_k", self.top_k, minimum=0, optional=True)
        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise GenerationError(f"do_sample must be True or False, got {self.do_sample!r}")
        _check_float("temperature", self.temperature)
        _check_float("top_p", self.top_p)
        _check_float("repetition_penalty", self.repetition_penalty)
        if self.min_p is not None:
            _check_float("min_p", self.min_p)
            if not 0.0 <= self.min_p <= 1.0:
                raise GenerationError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.do_sample and self.temperature <= 0:
            raise GenerationError(f"temperature must be > 0 when sampling (do_sample=True), got {self.temperature}; "
                                  "use do_sample=False for greedy decoding")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise GenerationError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("bos_token_id", "pad_token_id"):
            _check_int(name, getattr(self, name), minimum=0, optional=True)
        for token in eos_token_ids(self.eos_token_id):
            _check_int("eos_token_id", token, minimum=0)

    def processors(self) -> tuple[str, ...]:
        """The logits processors this config switches on, in the order they run."""
        on = {
            "repetition_penalty": self.repetition_penalty != 1.0,
            "min_new_tokens": bool(eos_token_ids(self.eos_token_id)),
            "temperature": self.temperature != 1.0,
            "top_k": bool(self.top_k),
            "top_p": self.top_p < 1.0,
            "min_p": self.min_p is not None,
        }
        return tuple(name for name in PROCESSOR_ORDER
                     if on[name] and (self.do_sample or name not in SAMPLING_ONLY))


def _pad_or_none(pad_token_id: Any) -> Any:
    """None for a negative pad id: Meta's tokenizers say "no pad token" with pad_id -1, and Llama 1
    folders converted from them carry it in config.json (finished rows are then padded with eos)."""
    negative = isinstance(pad_token_id, int) and not isinstance(pad_token_id, bool) and pad_token_id < 0
    return None if negative else pad_token_id


def _check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise GenerationError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise GenerationError(f"{name} must be a finite number, got {value!r}")


def eos_token_ids(eos_token_id: int | list[int] | None) -> tuple[int, ...]:
    """eos_token_id as a tuple, whether given as None, an int or a list."""
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, (list, tuple)):
        return tuple(eos_token_id)
    return (eos_token_id,)


# ------------------------------------------------------------------------------------------------
# One call's plan: checked inputs and resolved lengths, before any backend compiles


@dataclass(frozen=True)
class DecodePlan:
    """What one generate call will do, with every number resolved and checked on the host.

    prompt_length is the padded width of input_ids; new tokens are counted from it, as in
    transformers. cache_length (bucketed) holds the prompt and every new token.
    """

    config: GenerationConfig
    batch_size: int
    prompt_length: int
    max_new_tokens: int
    min_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    cache_length: int

    @property
    def processors(self) -> tuple[str, ...]:
        return self.config.processors()


def plan_generation(input_ids: Any, attention_mask: Any, config: GenerationConfig, model_config: LlamaConfig,
                    cache_length: int | None = None, max_length_given: bool = False) -> DecodePlan:
    """Check a prompt batch against the config and the model, and resolve the lengths.

    input_ids and attention_mask are host arrays (numpy or anything np.asarray takes). Raises
    GenerationError for an empty prompt, a row with no real token, a token id outside the
    vocabulary, a prompt that leaves no room in max_length or in the given cache_length, or a length
    past the model's positions (position_limit), before any backend allocates a cache for it. As in
    transformers, a max_length left at its default of 20 (not given by the call) means 20 new tokens,
    capped at max_position_embeddings; max_length_given says the call set it.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise GenerationError(f"input_ids must be a non-empty (batch, length) array of token ids, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise GenerationError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
    batch, prompt_length = ids.shape
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= model_config.vocab_size:
        bad = low if low < 0 else high
        raise GenerationError(f"input_ids holds token id {bad}, outside the vocabulary [0, {model_config.vocab_size})")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise GenerationError(f"attention_mask has shape {mask.shape}, expected the shape of input_ids {ids.shape}")
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if empty.size:
        raise GenerationError(f"prompt row {int(empty[0])} is empty (its attention_mask is all zeros)")
    if not np.all(mask[:, -1]):
        warnings.warn("a prompt row ends in padding: pad on the left for decoder-only generation "
                      "(tokenizer padding_side='left'), as transformers advises", stacklevel=3)

    eos = eos_token_ids(config.eos_token_id)
    for token in (*eos, config.pad_token_id):
        if token is not None and token >= model_config.vocab_size:
            raise GenerationError(f"special token id {token} is outside the vocabulary [0, {model_config.vocab_size})")
    pad = config.pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
        if eos:
            warnings.warn(f"Setting pad_token_id to eos_token_id {pad} for open-end generation.", stacklevel=3)

    if config.max_new_tokens is not None:
        max_new = config.max_new_tokens
    elif not max_length_given and config.max_length == GenerationConfig.max_length:
        max_new = min(config.max_length, model_config.max_position_embeddings - prompt_length)
        if max_new < 1:
            raise GenerationError(f"the prompt has {prompt_length} tokens, leaving no room under "
                                  f"max_position_embeddings {model_config.max_position_embeddings}: set max_new_tokens")
    else:
        if prompt_length >= config.max_length:
            raise GenerationError(f"the prompt has {prompt_length} tokens but max_length is {config.max_length}: "
                                  "raise max_length or set max_new_tokens")
        max_new = config.max_length - prompt_length
    min_new = max(config.min_new_tokens or 0, config.min_length - prompt_length, 0)

    needed = prompt_length + max_new
    limit = position_limit(model_config)
    if needed > limit:
        asked = f"max_new_tokens {max_new}" if config.max_new_tokens is not None else f"max_length {config.max_length}"
        raise GenerationError(f"{asked} with a {prompt_length}-token prompt needs {needed} positions, more than the "
                              f"model's limit of {limit} ({_limit_reason(model_config)}); ask for at most "
                              f"{max(limit - prompt_length, 0)} new tokens")
    if cache_length is None:
        cache_length = bucket_length(needed)
    elif prompt_length >= cache_length:
        raise GenerationError(f"the prompt has {prompt_length} tokens, longer than the cache of {cache_length}")
    elif needed > cache_length:
        raise GenerationError(f"the prompt ({prompt_length} tokens) and max_new_tokens ({max_new}) need "
                              f"{needed} cache slots, more than the cache of {cache_length}")
    return DecodePlan(config, batch, prompt_length, max_new, min_new, eos, pad, cache_length)


def position_limit(model_config: LlamaConfig) -> int:
    """The most positions a generation may use: max_position_embeddings, times the factor for dynamic
    rope scaling (which exists to stretch past it)."""
    if model_config.rope_type == "dynamic":
        return int(model_config.max_position_embeddings * model_config.rope_scaling["factor"])
    return model_config.max_position_embeddings


def _limit_reason(model_config: LlamaConfig) -> str:
    if model_config.rope_type == "dynamic":
        return "max_position_embeddings times the dynamic rope factor"
    return "max_position_embeddings"


def bucket_length(length: int) -> int:
    """The smallest bucket that holds length: powers of two from 16 to 1024 and the midpoints 1.5x
    between them (at most a third of a cache unused: every decode step reads all of it), then
    multiples of 1024."""
    for bucket in LENGTH_BUCKETS:
        if length <= bucket:
            return bucket
    step = LENGTH_BUCKETS[-1]
    return -(-length // step) * step


def resolve_config(base: GenerationConfig, override: GenerationConfig | None, **arguments: Any) -> GenerationConfig:
    """The call's config: the given generation_config (else the model's), then the call's arguments."""
    return (override or base).update(**arguments)


def can_generate(class_name: str) -> bool:
    """Only the causal-LM architecture (LlamaForCausalLM, in both twins) generates text."""
    return class_name == "LlamaForCausalLM"
