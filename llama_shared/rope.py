"""Rotary position embeddings: inverse frequencies and attention factor for every rope_type.

The one place the RoPE math lives. Static tables (default, linear, yarn, llama3) are float32
numpy arrays computed once. dynamic (NTK) and longrope depend on the sequence length, which may be
a traced JAX value or a torch tensor, so those functions take the array namespace ``xp``
(numpy, jax.numpy or torch) and use only operations all three share. Formulas follow
transformers' modeling_rope_utils (v5, which fixed 4.57's longrope: docs/numerics.md); the layout
is Hugging Face's rotate_half.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from llama_shared.config import LlamaConfig


def _exponents(config: LlamaConfig) -> np.ndarray:
    dim = config.head_dim
    return np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)


def _default_inv_freq(config: LlamaConfig) -> np.ndarray:
    return (1.0 / (np.float32(config.rope_theta) ** _exponents(config))).astype(np.float32)


def _linear_inv_freq(config: LlamaConfig) -> np.ndarray:
    return (_default_inv_freq(config) / np.float32(config.rope_scaling["factor"])).astype(np.float32)


def _yarn_inv_freq(config: LlamaConfig) -> np.ndarray:
    scaling, dim, base = config.rope_scaling, config.head_dim, config.rope_theta
    factor = scaling["factor"]
    original = config.rope_original_length
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    extrapolation_weight = 1 - ramp
    pos_freqs = np.float32(base) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))
    extrapolated, interpolated = 1.0 / pos_freqs, 1.0 / (np.float32(factor) * pos_freqs)
    inv = interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight
    return inv.astype(np.float32)


def _llama3_inv_freq(config: LlamaConfig) -> np.ndarray:
    scaling = config.rope_scaling
    inv = _default_inv_freq(config)
    factor, low_ff, high_ff = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = config.rope_original_length
    low_wavelen, high_wavelen = original / low_ff, original / high_ff
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_wavelen, inv / np.float32(factor), inv)
    smooth = (original / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


_STATIC_INV_FREQ = {
    "default": _default_inv_freq,
    "linear": _linear_inv_freq,
    "dynamic": _default_inv_freq,   # equal to default up to max_position_embeddings
    "yarn": _yarn_inv_freq,
    "llama3": _llama3_inv_freq,
}


def attention_factor(config: LlamaConfig) -> float:
    """The factor that multiplies cos and sin (1 except for yarn and longrope)."""
    scaling = config.rope_scaling or {}
    rope_type = config.rope_type
    if rope_type == "yarn":
        if scaling.get("attention_factor") is not None:
            return float(scaling["attention_factor"])
        factor, mscale, mscale_all_dim = scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim")

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if mscale and mscale_all_dim:
            return float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        return get_mscale(factor)
    if rope_type == "longrope":
        if scaling.get("attention_factor") is not None:
            return float(scaling["attention_factor"])
        original = config.rope_original_length
        factor = scaling.get("factor") or config.max_position_embeddings / original
        if factor <= 1.0:
            return 1.0
        return math.sqrt(1 + math.log(factor) / math.log(original))
    return 1.0


def is_length_dependent(config: LlamaConfig) -> bool:
    """True when the frequencies change with the sequence length (dynamic, longrope)."""
    return config.rope_type in ("dynamic", "longrope")


def static_inv_freq(config: LlamaConfig) -> np.ndarray:
    """float32 inverse frequencies for sequences up to the original length: (head_dim/2,)."""
    if config.rope_type == "longrope":
        return _longrope_inv_freq_numpy(config, long=False)
    return _STATIC_INV_FREQ[config.rope_type](config)


def _longrope_inv_freq_numpy(config: LlamaConfig, long: bool) -> np.ndarray:
    factors = np.asarray(config.rope_scaling["long_factor" if long else "short_factor"], dtype=np.float32)
    base = np.float32(config.rope_theta) ** _exponents(config)
    return (1.0 / (factors * base)).astype(np.float32)


def inv_freq(config: LlamaConfig, seq_len: Any = None, xp: ModuleType = np) -> Any:
    """Inverse frequencies in force for a sequence of seq_len positions, as an xp array.

    seq_len is max(position)+1 and may be a traced or tensor scalar. Only dynamic and longrope
    look at it: dynamic raises the base past max_position_embeddings (the NTK rule), longrope
    switches to long_factor past the original length. transformers keeps this state between calls;
    here it is recomputed from the positions of each call, which is the same for a growing sequence.
    """
    rope_type = config.rope_type
    if seq_len is None or not is_length_dependent(config):
        return xp.asarray(static_inv_freq(config))
    if rope_type == "longrope":
        short = xp.asarray(_longrope_inv_freq_numpy(config, long=False))
        long = xp.asarray(_longrope_inv_freq_numpy(config, long=True))
        return xp.where(seq_len > config.rope_original_length, long, short)
    dim, mpe = config.head_dim, config.max_position_embeddings
    factor = config.rope_scaling["factor"]
    if isinstance(seq_len, (int, np.integer)):
        length = max(int(seq_len), mpe)  # a host value: Python floats keep the result float32
    else:
        length = xp.where(seq_len > mpe, seq_len, mpe)
    base = config.rope_theta * ((factor * length / mpe) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** xp.asarray(_exponents(config)))


def rotary_cos_sin(positions: Any, frequencies: Any, scale: float, xp: ModuleType) -> tuple[Any, Any]:
    """cos and sin tables (..., head_dim) for float32 positions (...), in rotate_half layout.

    angle = position * frequency in float32 (as transformers does), duplicated over both halves
    of the head, then multiplied by the attention factor.
    """
    angles = positions[..., None] * frequencies
    emb = xp.concatenate([angles, angles], axis=-1)
    return xp.cos(emb) * scale, xp.sin(emb) * scale
