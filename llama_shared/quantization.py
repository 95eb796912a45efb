"""Weight-only int8 / int4 quantization: the storage format, the numpy reference and checkpoint metadata.

One quantized linear layer with float weight W (out, in) -- Hugging Face's orientation, in both
backends -- is stored as

  qweight  int8  (out, in)       for 8 bits: the codes;
           uint8 (out, in // 2)  for 4 bits: two codes per byte along the input dimension, column 2j
                                 in the low nibble and column 2j + 1 in the high one, each as code + 8;
  scales   float (out, in // group_size), the model's dtype unless scale_dtype says otherwise (per
                                 output channel without a group size: one group spans the row);
  zeros    int8  (out, groups), integer zero points: the code that stands for 0;
  mins     float (out, groups), float zero points: the value of the lowest code;

with codes in [qmin, qmax] = [-2^(bits-1), 2^(bits-1) - 1] and W[o, i] ~ (code - zero) * scale
(symmetric: zero 0) or (code - qmin) * scale + min (float zero points, GGUF Q4_1's d and m and
torchao's FLOAT zero-point domain) of group i // group_size. Scales follow torchao's affine mapping:
symmetric absmax / ((qmax - qmin) / 2); integer zero points (max - min) / (qmax - qmin) over a range
stretched to include 0; float zero points the same over the group's own range. The settings travel in config.json
(``quantization_config``; transformers 4.57 only warns about the unknown method, so do not hand these
folders to it) and in each safetensors file's metadata; a loader checks that the two and the caller agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError

BITS = (4, 8)
GROUP_SIZES = (16, 32, 64, 128)
DEFAULT_INT4_GROUP_SIZE = 128
ZERO_POINT_DOMAINS = ("int", "float")
SCALE_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
# embed_tokens only where a checkpoint stores it quantized (GGUF): rows are gathered, then dequantized.
QUANTIZABLE_MODULES = (*DEFAULT_MODULES, "embed_tokens")
QUANTIZED_LEAVES = ("qweight", "scales", "zeros", "mins")
# How a quantized layer multiplies: "auto" takes the device's kernel where the format has one,
# "portable" dequantizes and multiplies in plain framework ops (the reference), "cpu" insists on the
# CPU kernel (an error where there is none).
KERNELS = ("auto", "portable", "cpu")
QUANT_METHOD = "llama-twin"
CONFIG_KEY = "quantization_config"  # in config.json, as transformers names it
METADATA_KEY = "quantization"  # in each safetensors file's __metadata__


def input_features(config: LlamaConfig, module: str) -> int:
    """The input dimension of a linear layer, by its module name."""
    if module == "o_proj":
        return config.num_attention_heads * config.head_dim
    if module == "down_proj":
        return config.intermediate_size
    return config.hidden_size


def dividing_group_sizes(in_features: int) -> list[int]:
    """The allowed group sizes that divide a width."""
    return [size for size in GROUP_SIZES if in_features % size == 0]


@dataclass(frozen=True)
class QuantizationConfig:
    """How linear weights are quantized: bits, group size, zero points, scale dtype, which modules.

    group_size None is one scale per output channel (int8 only); otherwise groups of 16, 32, 64 or
    128 input columns (int4 always has groups). symmetric=False adds a zero point per group, an
    integer code (zero_point_domain "int") or the float value of the lowest code ("float").
    scale_dtype None keeps scales in the model's dtype. modules are leaf names of the decoder's
    linear layers and lm_head (skipped when tied to the embedding), and embed_tokens for checkpoints
    that store it quantized; norms and task heads stay in float. kernel is how the layers multiply
    (KERNELS): a run-time choice, never compared, written only when not "auto".
    """

    bits: int
    group_size: int | None = None
    symmetric: bool = True
    modules: tuple[str, ...] = DEFAULT_MODULES
    zero_point_domain: str = "int"
    scale_dtype: str | None = None
    kernel: str = field(default="auto", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))
        if self.bits not in BITS:
            raise ConfigError(f"quantization bits must be one of {BITS}, got {self.bits!r}")
        if self.group_size is None and self.bits == 4:
            raise ConfigError(f"int4 needs a group_size, one of {GROUP_SIZES}")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ConfigError(f"quantization group_size must be one of {GROUP_SIZES} (or None for one scale per "
                              f"output channel, int8 only), got {self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"quantization symmetric must be true or false, got {self.symmetric!r}")
        if self.zero_point_domain not in ZERO_POINT_DOMAINS:
            raise ConfigError(f"quantization zero_point_domain must be one of {ZERO_POINT_DOMAINS}, "
                              f"got {self.zero_point_domain!r}")
        if self.symmetric and self.zero_point_domain != "int":
            raise ConfigError("zero_point_domain 'float' needs symmetric=False (a symmetric layer has no zero points)")
        if self.scale_dtype is not None and self.scale_dtype not in SCALE_DTYPES:
            raise ConfigError(f"quantization scale_dtype must be None or one of {SCALE_DTYPES}, got {self.scale_dtype!r}")
        if not self.modules or not set(self.modules) <= set(QUANTIZABLE_MODULES):
            raise ConfigError(f"quantization modules must be a non-empty subset of {list(QUANTIZABLE_MODULES)}, "
                              f"got {list(self.modules)!r}")
        if self.kernel not in KERNELS:
            raise ConfigError(f"quantization kernel must be one of {KERNELS}, got {self.kernel!r}")

    @classmethod
    def create(cls, quantization: "str | QuantizationConfig", group_size: int | None = None,
               symmetric: bool = True, modules: tuple[str, ...] | None = None,
               zero_point_domain: str = "int") -> "QuantizationConfig":
        """From "int8" / "int4" (int4's group size defaults to 128) or a QuantizationConfig as is."""
        if isinstance(quantization, QuantizationConfig):
            return quantization
        names = {"int8": 8, "int4": 4}
        if quantization not in names:
            raise ConfigError(f"quantization must be one of {sorted(names)} or a QuantizationConfig, "
                              f"got {quantization!r}")
        bits = names[quantization]
        if bits == 4 and group_size is None:
            group_size = DEFAULT_INT4_GROUP_SIZE
        return cls(bits, group_size, symmetric, DEFAULT_MODULES if modules is None else tuple(modules),
                   zero_point_domain)

    @property
    def name(self) -> str:
        """"int8", "int8-g32", "int4-g128", with "-zp" for integer zero points and "-fzp" for float ones."""
        group = f"-g{self.group_size}" if self.group_size else ""
        zero = "" if self.symmetric else "-zp" if self.zero_point_domain == "int" else "-fzp"
        return f"int{self.bits}{group}{zero}"

    @property
    def float_zero(self) -> bool:
        """Zero points are float minimums (the mins tensor)."""
        return not self.symmetric and self.zero_point_domain == "float"

    @property
    def code_range(self) -> tuple[int, int]:
        """Smallest and largest code."""
        return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1

    def groups(self, in_features: int) -> int:
        """Scale groups per output row."""
        return 1 if self.group_size is None else in_features // self.group_size

    def leaves(self) -> tuple[str, ...]:
        """The tensors a quantized layer stores."""
        return ("qweight", "scales") + (() if self.symmetric else ("mins",) if self.float_zero else ("zeros",))

    def quantizes(self, module: str, config: LlamaConfig) -> bool:
        """Whether the linear layer of that leaf name is quantized (never a tied lm_head: it is the embedding)."""
        return module in self.modules and not (module == "lm_head" and config.tie_word_embeddings)

    def check_model(self, config: LlamaConfig) -> None:
        """Raise ConfigError when the group size does not divide a quantized layer's input dimension."""
        for module in self.modules:
            if self.quantizes(module, config):
                check_divides(self, input_features(config, module), module)

    def tensor_specs(self, out_features: int, in_features: int, scale_dtype: Any) -> dict[str, tuple]:
        """{leaf: (shape, numpy dtype)} of one quantized layer's tensors (scale_dtype: the model's,
        used unless the config names its own)."""
        check_divides(self, in_features, "the weight")
        groups = self.groups(in_features)
        scale_dtype = np.dtype(self.scale_dtype or scale_dtype)
        specs = {"qweight": ((out_features, in_features), np.dtype(np.int8)) if self.bits == 8
                 else ((out_features, in_features // 2), np.dtype(np.uint8)),
                 "scales": ((out_features, groups), scale_dtype)}
        if self.float_zero:
            specs["mins"] = ((out_features, groups), scale_dtype)
        elif not self.symmetric:
            specs["zeros"] = ((out_features, groups), np.dtype(np.int8))
        return specs

    def to_dict(self) -> dict[str, Any]:
        """The config.json / metadata form."""
        data = {"quant_method": QUANT_METHOD, **asdict(self), "modules": list(self.modules)}
        if self.kernel == "auto":
            del data["kernel"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> "QuantizationConfig":
        """Parse the config.json / metadata form; errors name the source."""
        if not isinstance(data, Mapping) or data.get("quant_method") != QUANT_METHOD:
            raise CheckpointError(f"{source}: quantization settings {data!r} are not llama-twin's "
                                  f"(expected quant_method {QUANT_METHOD!r})")
        fields = {k: v for k, v in data.items() if k != "quant_method"}
        try:
            return cls(**fields)
        except (TypeError, ConfigError) as e:
            raise CheckpointError(f"{source}: bad quantization settings: {e}") from None


def check_divides(quantization: QuantizationConfig, in_features: int, what: str) -> None:
    """Raise ConfigError, naming the group sizes that would fit, when the group size does not divide in_features."""
    if quantization.group_size is not None and in_features % quantization.group_size:
        fitting = dividing_group_sizes(in_features)
        hint = (f"group sizes that divide it: {', '.join(map(str, fitting))}" if fitting else
                f"none of {GROUP_SIZES} divides it" + ("; int8 can take group_size None (per channel)"
                                                         if quantization.bits == 8 else ""))
        raise ConfigError(f"{quantization.name}: group_size {quantization.group_size} does not divide the input "
                          f"width {in_features} of {what}; {hint}")


# ------------------------------------------------------------------------------------------------
# The numpy reference


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """int codes in [-8, 7], shape (out, in) -> uint8 (out, in // 2), even columns in the low nibble."""
    shifted = (codes.astype(np.int16) + 8).astype(np.uint8)
    return shifted[:, 0::2] | (shifted[:, 1::2] << 4)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """The inverse of pack_int4: int8 codes (out, in)."""
    low, high = (packed & 15).astype(np.int8) - 8, (packed >> 4).astype(np.int8) - 8
    return np.stack([low, high], axis=-1).reshape(packed.shape[0], -1)


def quantize(weight: np.ndarray, quantization: QuantizationConfig, scale_dtype: Any = np.float32,
             name: str = "the weight") -> dict[str, np.ndarray]:
    """Quantize a float weight (out, in) into the layer's tensors (QuantizationConfig.leaves).

    Scales (and float minimums) are rounded to their stored dtype before the codes are chosen, so
    the codes are rounded against the stored values.
    """
    if weight.ndim != 2:
        raise ConfigError(f"only 2-D linear weights are quantized; {name} has shape {weight.shape}")
    out_features, in_features = weight.shape
    check_divides(quantization, in_features, name)
    groups = quantization.groups(in_features)
    stored = np.dtype(quantization.scale_dtype or scale_dtype)
    w = np.asarray(weight, dtype=np.float32).reshape(out_features, groups, in_features // groups)
    qmin, qmax = quantization.code_range
    low = w.min(axis=-1)
    if quantization.symmetric:
        scale = np.max(np.abs(w), axis=-1) / ((qmax - qmin) / 2)
    elif quantization.float_zero:
        scale = (w.max(axis=-1) - low) / (qmax - qmin)
    else:
        low = np.minimum(low, 0)
        scale = (np.maximum(w.max(axis=-1), 0) - low) / (qmax - qmin)
    scale = np.where(scale > 0, scale, 1).astype(stored)
    scale32 = scale.astype(np.float32)
    tensors: dict[str, np.ndarray] = {"scales": scale}
    if quantization.float_zero:
        tensors["mins"] = low.astype(stored)
        offset = (w - tensors["mins"].astype(np.float32)[..., None]) / scale32[..., None] + qmin
    else:
        zero = np.zeros_like(scale32) if quantization.symmetric else np.clip(qmin - np.round(low / scale32), qmin, qmax)
        if not quantization.symmetric:
            tensors["zeros"] = zero.astype(np.int8)
        offset = w / scale32[..., None] + zero[..., None]
    codes = np.clip(np.round(offset), qmin, qmax).astype(np.int8).reshape(out_features, in_features)
    return {"qweight": codes if quantization.bits == 8 else pack_int4(codes), **tensors}


def dequantize(tensors: Mapping[str, np.ndarray], quantization: QuantizationConfig) -> np.ndarray:
    """The float32 weight (out, in) that the stored tensors stand for."""
    qweight = np.asarray(tensors["qweight"])
    codes = qweight if quantization.bits == 8 else unpack_int4(qweight)
    out_features, in_features = codes.shape
    scales = np.asarray(tensors["scales"]).astype(np.float32)[..., None]
    grouped = codes.reshape(out_features, scales.shape[1], -1).astype(np.float32)
    if "mins" in tensors:
        weight = (grouped - quantization.code_range[0]) * scales + np.asarray(tensors["mins"]).astype(np.float32)[..., None]
    elif "zeros" in tensors:
        weight = (grouped - np.asarray(tensors["zeros"]).astype(np.float32)[..., None]) * scales
    else:
        weight = grouped * scales
    return weight.reshape(out_features, in_features)


# ------------------------------------------------------------------------------------------------
# Model configs and checkpoints


def config_quantization(config: LlamaConfig) -> QuantizationConfig | None:
    """The quantization a model config carries (None: a float model)."""
    data = config.extra.get(CONFIG_KEY)
    return None if data is None else QuantizationConfig.from_dict(data, "config.json")


def with_kernel(quantization: QuantizationConfig, kernel: str) -> QuantizationConfig:
    """The same settings multiplied by another kernel (one of KERNELS)."""
    return replace(quantization, kernel=kernel)


def with_quantization(config: LlamaConfig, quantization: QuantizationConfig) -> LlamaConfig:
    """A copy of config that carries the quantization, after checking group sizes against its shapes."""
    quantization.check_model(config)
    return replace(config, extra={**config.extra, CONFIG_KEY: quantization.to_dict()})


def checkpoint_metadata(config: LlamaConfig) -> dict[str, str]:
    """The safetensors metadata a save of this model writes (empty for a float model)."""
    quantization = config_quantization(config)
    return {} if quantization is None else {METADATA_KEY: json.dumps(quantization.to_dict(), sort_keys=True)}


def checkpoint_quantization(metadata: Mapping[str, str], directory: str) -> QuantizationConfig | None:
    """The quantization recorded in a checkpoint's safetensors metadata (None: float weights)."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{directory}: safetensors metadata {METADATA_KEY!r} is not JSON: {text!r}") from None
    return QuantizationConfig.from_dict(data, f"safetensors metadata in {directory}")


def resolve_quantization(requested: "str | QuantizationConfig | None", group_size: int | None,
                         config: LlamaConfig, metadata: Mapping[str, str],
                         directory: str) -> QuantizationConfig | None:
    """What from_pretrained builds: the caller's request, or what a quantized checkpoint holds.

    A quantized checkpoint loads as it was saved; asking for other settings (or for a float model
    through a config without its quantization) raises CheckpointError naming both.
    """
    stored = checkpoint_quantization(metadata, directory)
    declared = config_quantization(config)
    if stored != declared:
        raise CheckpointError(f"{directory}: the config (config.json) says {_describe(declared)} but the safetensors "
                              f"metadata says {_describe(stored)}")
    if requested is None:
        if group_size is not None:
            raise ConfigError("group_size was given without quantization='int4'")
        return stored
    wanted = QuantizationConfig.create(requested, group_size)
    if stored is not None and stored != wanted:
        raise CheckpointError(f"the checkpoint at {directory} holds {_describe(stored)}; it cannot load as "
                              f"{_describe(wanted)}: leave quantization unset to load it as saved, or "
                              f"quantize from the float checkpoint")
    return wanted


def _describe(quantization: QuantizationConfig | None) -> str:
    return "float weights" if quantization is None else f"{quantization.name} of {list(quantization.modules)}"


def open_for_loading(checkpoint: Any, config: LlamaConfig, requested: "str | QuantizationConfig | None",
                     group_size: int | None, scale_dtype: Any) -> tuple[LlamaConfig, Any]:
    """The config a loader builds its model from and the checkpoint it reads, for from_pretrained.

    A float checkpoint asked to load quantized is wrapped in a QuantizingCheckpoint; a quantized one
    is read as it is, after resolve_quantization has checked the settings.
    """
    metadata = checkpoint.metadata
    quantization = resolve_quantization(requested, group_size, config, metadata, checkpoint.directory)
    if quantization is None:
        return config, checkpoint
    config = with_quantization(config, quantization)
    if checkpoint_quantization(metadata, checkpoint.directory) is None:
        checkpoint = QuantizingCheckpoint(checkpoint, quantization, scale_dtype)
    return config, checkpoint


class QuantizingCheckpoint:
    """A float checkpoint seen through a QuantizationConfig: the targeted linear weights also appear as
    ``<module>.qweight`` / ``.scales`` / ``.zeros``, quantized (numpy reference) when first read.

    Loaders read it like a Checkpoint, so a model is quantized one tensor at a time and the float
    model is never held whole. The last layer's tensors are kept until its next leaf is read.
    """

    def __init__(self, checkpoint: Any, quantization: QuantizationConfig, scale_dtype: Any):
        self.checkpoint, self.quantization, self.scale_dtype = checkpoint, quantization, np.dtype(scale_dtype)
        self.directory = checkpoint.directory
        self._sources: dict[str, tuple[str, str]] = {}
        for key in checkpoint.keys():
            module, _, leaf = key.rpartition(".")
            if leaf == "weight" and module.rpartition(".")[2] in quantization.modules \
                    and len(checkpoint.shape(key)) == 2:
                for quantized_leaf in quantization.leaves():
                    self._sources[f"{module}.{quantized_leaf}"] = (key, quantized_leaf)
        self._cached: tuple[str, dict[str, np.ndarray]] | None = None

    def keys(self) -> list[str]:
        return [*self.checkpoint.keys(), *self._sources]

    def __contains__(self, key: str) -> bool:
        return key in self._sources or key in self.checkpoint

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._sources:
            return self.checkpoint.shape(key)
        source, leaf = self._sources[key]
        return self._specs(source)[leaf][0]

    def dtype(self, key: str) -> np.dtype:
        if key not in self._sources:
            return self.checkpoint.dtype(key)
        source, leaf = self._sources[key]
        return self._specs(source)[leaf][1]

    def read(self, key: str) -> np.ndarray:
        """A copy of the tensor (a quantized one is always a fresh array)."""
        return self.checkpoint.read(key) if key not in self._sources else self.get(key)

    def get(self, key: str) -> np.ndarray:
        if key not in self._sources:
            return self.checkpoint.get(key)
        source, leaf = self._sources[key]
        if self._cached is None or self._cached[0] != source:
            self._cached = (source, quantize(self.checkpoint.read(source), self.quantization, self.scale_dtype,
                                             f"tensor {source!r} in {self.directory}"))
        return self._cached[1][leaf]

    def _specs(self, source: str) -> dict[str, tuple]:
        out_features, in_features = self.checkpoint.shape(source)
        try:
            return self.quantization.tensor_specs(out_features, in_features, self.scale_dtype)
        except ConfigError as e:
            raise ConfigError(f"tensor {source!r} in {self.directory}: {e}") from None
