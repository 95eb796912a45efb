"""Llama in Flax Linen: the twin of llama_torch/modeling.py, class for class and in the same order.

Parameter paths are transformers' Flax paths (model/layers/0/self_attn/q_proj/kernel, kernels
[in, out]). Numerics follow the contract in docs/numerics.md: RMSNorm in float32 and cast back before the
weight, RoPE tables in float32 from llama_shared.rope, attention logits and softmax in float32
(grouped_attention: jax.nn.dot_product_attention's math), GQA without repeating K/V. The cache is
functional: layers take their LayerCache and return the updated one.

With scan_layers=True the decoder layers run as one nn.scan over a stack of their params (a
leading layer axis: model/layers/self_attn/q_proj/kernel is (layers, in, out)), so compile time and
program size stay flat as the model gets deeper; llama_flax.scan converts between the two trees,
and checkpoints on disk keep the per-layer layout.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llama_flax import kernels
from llama_flax.cache import KVCache, LayerCache
from llama_flax.loading import FlaxPreTrainedModel
from llama_flax.lora import LoraDense, LoraMixin, LoraQuantizedDense, LoraUpdate
from llama_flax.matmul import dense_dot_general
from llama_flax.quantization import QuantizedDense, QuantizedEmbed, shared_input_products
from llama_flax.sharding import constrain
from llama_shared import lora
from llama_shared import quantization as q
from llama_shared import rope
from llama_shared.config import LlamaConfig
from llama_shared.heads import (IGNORE_INDEX, packed_labels, require_pad_for_batch, sequence_problem_type,
                                token_classifier_dropout)
from llama_shared.masks import (attention_allowed, check_segment_ids, is_packed_causal, model_attention_allowed,
                                positions_from_segment_ids, query_has_keys)
from llama_shared.outputs import (BaseModelOutput, CausalLMOutput, QuestionAnsweringOutput,
                                  SequenceClassifierOutput, TokenClassifierOutput)

Array = jax.Array
ACTIVATIONS = {"silu": nn.silu, "swish": nn.silu, "relu": nn.relu,
               "gelu": lambda x: nn.gelu(x, approximate=False),
               "gelu_new": lambda x: nn.gelu(x, approximate=True),
               "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True)}
# Masked logits, as jax.nn.dot_product_attention sets them: finite, so a row with no allowed key
# stays finite (and is zeroed after), and far below any real logit.
LARGE_NEGATIVE = -0.7 * float(jnp.finfo(jnp.float32).max)
# What a decoder layer keeps for the backward pass: everything ("none": no remat), nothing
# ("full": recompute the layer), or only matmul outputs ("dots_saveable").
REMAT_POLICIES = {"none": None, "full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}


def linear(config: LlamaConfig, name: str, features: int, use_bias: bool, dtype: Any, param_dtype: Any) -> nn.Module:
    """The layer called name (torch: nn.Linear): nn.Dense with the one-row product of
    llama_flax.matmul, or QuantizedDense when the config quantizes it; their Lora* forms (llama_flax.lora)
    when the config carries an adapter that targets it."""
    quantization = q.config_quantization(config)
    adapter = lora.config_adapter(config)
    adapted = {"adapter": adapter} if adapter is not None and adapter.targets(name) else {}
    if quantization is not None and quantization.quantizes(name, config):
        layer = LoraQuantizedDense if adapted else QuantizedDense
        return layer(features, quantization, use_bias, dtype, param_dtype, name=name, **adapted)
    layer = LoraDense if adapted else nn.Dense
    return layer(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                 kernel_init=nn.initializers.normal(config.initializer_range), dot_general=dense_dot_general,
                 **adapted)


class LlamaRMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in float32, cast back to the input dtype, then times the weight."""

    eps: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight.astype(x.dtype) * normed.astype(x.dtype)


def rotate_half(x: Array) -> Array:
    """(x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate((-x2, x1), axis=-1)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate x (batch, seq, heads, head_dim) by the (batch, seq, head_dim) tables."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return x * cos + rotate_half(x) * sin


class LlamaRotaryEmbedding(nn.Module):
    """cos/sin tables for given positions, from llama_shared.rope's frequencies."""

    config: LlamaConfig

    def __call__(self, position_ids: Array, dtype: Any) -> tuple[Array, Array]:
        seq_len = jnp.max(position_ids) + 1 if rope.is_length_dependent(self.config) else None
        frequencies = jnp.asarray(rope.inv_freq(self.config, seq_len, jnp), jnp.float32)
        cos, sin = rope.rotary_cos_sin(position_ids.astype(jnp.float32), frequencies,
                                       rope.attention_factor(self.config), jnp)
        return cos.astype(dtype), sin.astype(dtype)


def dot_product_attention(q: Array, k: Array, v: Array, allowed: Array | None,
                          segment_ids: Array | None = None) -> Array:
    """Softmax attention of q (batch, seq, heads, head_dim) over k/v (batch * kv_heads, keys,
    head_dim), the cache's layout; K/V keep their kv heads.

    allowed None means plainly causal (no padding, no cache): on a GPU with half-precision inputs
    that runs cuDNN's fused kernel, elsewhere grouped_attention. segment_ids, given when allowed is
    exactly causal within documents (a packed row), lets a segment-aware kernel run instead of the
    grid: Splash attention on a TPU, cuDNN with the document mask on a GPU (llama_flax.kernels). A
    query with no allowed key (left padding) outputs zeros.
    """
    batch = q.shape[0]
    if segment_ids is not None:
        out = kernels.packed_attention(q, kv_columns(k, batch), kv_columns(v, batch), segment_ids)
        if out is not None:
            return out
    if allowed is None and kernels.cudnn_supports(q):
        return jax.nn.dot_product_attention(q, kv_columns(k, batch), kv_columns(v, batch), is_causal=True,
                                            implementation="cudnn")
    out = grouped_attention(q, k, v, allowed)
    return out if allowed is None else jnp.where(query_has_keys(allowed), out, 0.0)


def grouped_attention(q: Array, k: Array, v: Array, allowed: Array | None) -> Array:
    """jax.nn.dot_product_attention's XLA math (float32 logits and softmax), with the query heads
    and positions that share a kv head as the rows of one batched dot over k/v (batch * kv_heads,
    keys, head_dim). jax's vmap over the query groups had XLA:CPU copy every layer's keys into
    another layout, three times slower for one decoding query. allowed: (batch, 1 or heads, seq,
    keys), or None for causal."""
    batch, seq, heads, head_dim = q.shape
    kv_heads, keys = k.shape[0] // batch, k.shape[1]
    groups = heads // kv_heads
    rows = q.reshape(batch, seq, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    logits = jnp.einsum("xrd,xsd->xrs", rows.reshape(batch * kv_heads, groups * seq, head_dim), k,
                        preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, kv_heads, groups, seq, keys) * jnp.float32(1 / math.sqrt(head_dim))
    if allowed is None:
        allowed = attention_allowed(jnp.arange(seq), jnp.arange(keys))
    if allowed.shape[1] == 1:
        allowed = allowed[:, :, None]
    else:
        allowed = allowed.reshape(allowed.shape[0], kv_heads, groups, seq, keys)
    logits = jnp.where(allowed, logits, LARGE_NEGATIVE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("xrs,xsd->xrd", probs.reshape(batch * kv_heads, groups * seq, keys), v)
    return out.reshape(batch, kv_heads, groups, seq, head_dim).transpose(0, 3, 1, 2, 4).reshape(q.shape)


def kv_rows(x: Array) -> Array:
    """(batch, seq, kv_heads, head_dim) -> (batch * kv_heads, seq, head_dim), the cache's layout."""
    batch, seq, kv_heads, head_dim = x.shape
    return x.swapaxes(1, 2).reshape(batch * kv_heads, seq, head_dim)


def kv_columns(x: Array, batch: int) -> Array:
    """kv_rows undone: (batch * kv_heads, seq, head_dim) -> (batch, seq, kv_heads, head_dim)."""
    return x.reshape(batch, -1, *x.shape[1:]).swapaxes(1, 2)


class LlamaAttention(nn.Module):
    """Multi-head attention with grouped key/value heads and an optional KV cache."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        dense = lambda name, features: linear(c, name, features, c.attention_bias, self.dtype,  # noqa: E731
                                              self.param_dtype)
        self.q_proj = dense("q_proj", c.num_attention_heads * c.head_dim)
        self.k_proj = dense("k_proj", c.num_key_value_heads * c.head_dim)
        self.v_proj = dense("v_proj", c.num_key_value_heads * c.head_dim)
        self.o_proj = dense("o_proj", c.hidden_size)

    def __call__(self, x: Array, cos: Array, sin: Array, allowed: Array | None, cache: LayerCache | None = None,
                 cache_position: Array | None = None,
                 segment_ids: Array | None = None) -> tuple[Array, LayerCache | None]:
        c = self.config
        batch, seq, _ = x.shape
        q, k, v = shared_input_products(x, (self.q_proj, self.k_proj, self.v_proj))
        q = q.reshape(batch, seq, c.num_attention_heads, c.head_dim)
        k = k.reshape(batch, seq, c.num_key_value_heads, c.head_dim)
        v = v.reshape(batch, seq, c.num_key_value_heads, c.head_dim)
        q = constrain(apply_rotary(q, cos, sin), "batch", "length", "heads", "head_dim")
        k = constrain(apply_rotary(k, cos, sin), "batch", "length", "kv_heads", "head_dim")
        k, v = kv_rows(k), kv_rows(v)
        if cache is not None:
            cache = cache.update(k, v, cache_position)
            k, v = cache.arrays()
        out = dot_product_attention(q, k, v, allowed, segment_ids)
        return self.o_proj(out.reshape(batch, seq, c.num_attention_heads * c.head_dim)), cache


class LlamaMLP(nn.Module):
    """down(act(gate(x)) * up(x))."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dense = lambda features, name: linear(c, name, features, c.mlp_bias, self.dtype, self.param_dtype)  # noqa: E731
        gate, up = shared_input_products(x, (dense(c.intermediate_size, "gate_proj"),
                                             dense(c.intermediate_size, "up_proj")))
        hidden = constrain(ACTIVATIONS[c.hidden_act](gate) * up, "batch", "length", "mlp")
        return dense(c.hidden_size, "down_proj")(hidden)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then h + mlp(norm(h))."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        self.self_attn = LlamaAttention(c, self.dtype, self.param_dtype)
        self.mlp = LlamaMLP(c, self.dtype, self.param_dtype)
        self.input_layernorm = LlamaRMSNorm(c.rms_norm_eps, self.param_dtype)
        self.post_attention_layernorm = LlamaRMSNorm(c.rms_norm_eps, self.param_dtype)

    def __call__(self, x: Array, cos: Array, sin: Array, allowed: Array | None, cache: LayerCache | None = None,
                 cache_position: Array | None = None,
                 segment_ids: Array | None = None) -> tuple[Array, LayerCache | None]:
        attn_out, cache = self.self_attn(self.input_layernorm(x), cos, sin, allowed, cache, cache_position,
                                         segment_ids)
        h = x + attn_out
        return h + self.mlp(self.post_attention_layernorm(h)), cache


class LlamaScannedLayer(LlamaDecoderLayer):
    """A decoder layer as the body of nn.scan over the stacked layers: the carry is the hidden state
    and the whole KV cache (each step writes its own layer's new slots), the scanned input the
    layer's index, the output the layer's hidden state when hidden states are wanted."""

    keep_hidden_states: bool = False

    def __call__(self, carry: tuple[Array, KVCache | None], index: Array, cos: Array, sin: Array,
                 allowed: Array | None, cache_position: Array | None,
                 segment_ids: Array | None) -> tuple[tuple[Array, KVCache | None], Array | None]:
        x, cache = carry
        layer_cache = cache.layer(index) if cache is not None else None
        x, layer_cache = super().__call__(x, cos, sin, allowed, layer_cache, cache_position, segment_ids)
        x = constrain(x, "batch", "length", "hidden")
        if cache is not None:
            cache = cache.replace_layer(index, layer_cache)
        return (x, cache), (x if self.keep_hidden_states else None)


class LlamaLayers(nn.Module):
    """The decoder layers, each rematerialised in the backward pass as remat_policy says (a key of
    REMAT_POLICIES): unrolled, named "0", "1", ... under "layers" as in transformers' Flax tree, or
    with scan_layers one nn.scan over params stacked along a leading layer axis."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, allowed: Array | None, cache: KVCache | None,
                 cache_position: Array | None, output_hidden_states: bool,
                 segment_ids: Array | None = None) -> tuple[Array, KVCache | None, list]:
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r}: expected one of {sorted(REMAT_POLICIES)}")
        if self.scan_layers:
            return self._scanned(x, cos, sin, allowed, cache, cache_position, output_hidden_states, segment_ids)
        layer_class = LlamaDecoderLayer
        if self.remat_policy != "none":
            layer_class = nn.remat(LlamaDecoderLayer, policy=REMAT_POLICIES[self.remat_policy])
        hidden_states = []
        for i in range(self.config.num_hidden_layers):
            layer_cache = cache.layer(i) if cache is not None else None
            x, layer_cache = layer_class(self.config, self.dtype, self.param_dtype, name=str(i))(
                x, cos, sin, allowed, layer_cache, cache_position, segment_ids)
            x = constrain(x, "batch", "length", "hidden")
            if cache is not None:
                cache = cache.replace_layer(i, layer_cache)
            if output_hidden_states:
                hidden_states.append(x)
        return x, cache, hidden_states

    def _scanned(self, x: Array, cos: Array, sin: Array, allowed: Array | None, cache: KVCache | None,
                 cache_position: Array | None, output_hidden_states: bool,
                 segment_ids: Array | None) -> tuple[Array, KVCache | None, list]:
        if cache is not None and not cache.stacked:
            raise ValueError("a model with scan_layers=True takes a stacked KVCache "
                             "(KVCache.create(..., stacked=True))")
        body = LlamaScannedLayer
        if self.remat_policy != "none":
            body = nn.remat(body, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=False)
        layers = self.config.num_hidden_layers
        scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True}, length=layers,
                       in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast))
        (x, cache), states = scan(self.config, self.dtype, self.param_dtype, keep_hidden_states=output_hidden_states,
                                  name="scan")(
            (x, cache), jnp.arange(layers), cos, sin, allowed, cache_position, segment_ids)
        return x, cache, [states[i] for i in range(layers)] if output_hidden_states else []


class LlamaModule(nn.Module):
    """Embeddings, the decoder layers and the final norm (torch: LlamaModel)."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"
    scan_layers: bool = False

    def setup(self) -> None:
        c = self.config
        quantization = q.config_quantization(c)
        if quantization is not None and quantization.quantizes("embed_tokens", c):
            self.embed_tokens = QuantizedEmbed(c.vocab_size, c.hidden_size, quantization, self.dtype, self.param_dtype)
        else:
            self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                                         embedding_init=nn.initializers.normal(c.initializer_range))
        self.layers = LlamaLayers(c, self.dtype, self.param_dtype, self.remat_policy, self.scan_layers)
        self.norm = LlamaRMSNorm(c.rms_norm_eps, self.param_dtype)
        self.rotary_emb = LlamaRotaryEmbedding(c)

    def __call__(self, input_ids: Array | None = None, attention_mask: Array | None = None,
                 position_ids: Array | None = None, past_key_values: KVCache | None = None,
                 inputs_embeds: Array | None = None, cache_position: Array | None = None,
                 output_hidden_states: bool = False, segment_ids: Array | None = None) -> BaseModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = constrain(self.embed_tokens(input_ids), "batch", "length", "hidden")
        batch, seq, _ = inputs_embeds.shape
        cached = past_key_values is not None
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask)  # a numpy mask closed over by jit meets traced slots
        check_segment_ids(segment_ids, (batch, seq), cached, attention_mask)
        if cache_position is None:
            cache_position = jnp.arange(seq)
        if position_ids is None and segment_ids is not None:
            position_ids = positions_from_segment_ids(segment_ids, jnp, partial(jax.lax.cummax, axis=1))
        if position_ids is None:
            position_ids = jnp.broadcast_to(cache_position[None], (batch, seq))
        keys = past_key_values.max_length if cached else seq
        allowed = model_attention_allowed(attention_mask, cache_position, jnp.arange(keys), cached, segment_ids)
        packed = segment_ids if is_packed_causal(attention_mask, cached, segment_ids) else None
        cos, sin = self.rotary_emb(position_ids, inputs_embeds.dtype)

        x, past_key_values, layer_states = self.layers(inputs_embeds, cos, sin, allowed, past_key_values,
                                                       cache_position, output_hidden_states, packed)
        x = self.norm(x)
        hidden_states = None
        if output_hidden_states:
            hidden_states = (inputs_embeds, *layer_states[:-1], x)
        return BaseModelOutput(x, hidden_states, past_key_values)

    def attend(self, x: Array) -> Array:
        """Logits through the (tied) embedding matrix."""
        return self.embed_tokens.attend(x)


class LlamaForCausalLMModule(nn.Module):
    """LlamaModule with the language-model head; labels give the shifted cross-entropy loss."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"
    scan_layers: bool = False

    def setup(self) -> None:
        c = self.config
        self.model = LlamaModule(c, self.dtype, self.param_dtype, self.remat_policy, self.scan_layers)
        if not c.tie_word_embeddings:
            self.lm_head = linear(c, "lm_head", c.vocab_size, False, self.dtype, self.param_dtype)
        elif self._adapts_tied_head():
            self.lm_head = LoraUpdate(c.vocab_size, lora.config_adapter(c), self.dtype)

    def __call__(self, input_ids: Array | None = None, attention_mask: Array | None = None,
                 position_ids: Array | None = None, past_key_values: KVCache | None = None,
                 inputs_embeds: Array | None = None, labels: Array | None = None,
                 cache_position: Array | None = None, logits_to_keep: int = 0,
                 output_hidden_states: bool = False, segment_ids: Array | None = None) -> CausalLMOutput:
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                         cache_position, output_hidden_states, segment_ids)
        kept = out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state
        logits = self.model.attend(kept) if self.config.tie_word_embeddings else self.lm_head(kept)
        if self._adapts_tied_head():
            logits = logits + self.lm_head(kept)
        loss = causal_lm_loss(logits, labels, segment_ids) if labels is not None else None
        return CausalLMOutput(logits, loss, out.hidden_states, out.past_key_values)

    def _adapts_tied_head(self) -> bool:
        """An adapter targets lm_head while it is tied: the update is added to the embedding's attend."""
        adapter = lora.config_adapter(self.config)
        return self.config.tie_word_embeddings and adapter is not None and adapter.targets("lm_head")


def causal_lm_loss(logits: Array, labels: Array, segment_ids: Array | None = None) -> Array:
    """Mean cross-entropy of logits[t] against labels[t+1] in float32, ignoring -100 (and, in a packed
    row, every prediction across a document boundary)."""
    losses, keep = causal_lm_token_losses(logits, labels, segment_ids)
    return jnp.sum(losses) / jnp.sum(keep)


def causal_lm_token_losses(logits: Array, labels: Array, segment_ids: Array | None = None) -> tuple[Array, Array]:
    """Per-position float32 cross-entropy of logits[t] against labels[t+1] (0 where not scored) and
    the (batch, seq) mask of scored positions."""
    if segment_ids is not None:
        labels = packed_labels(labels, segment_ids, jnp)
    shifted = jnp.pad(labels, ((0, 0), (0, 1)), constant_values=IGNORE_INDEX)[:, 1:]
    keep = shifted != IGNORE_INDEX
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(keep, shifted, 0))
    return jnp.where(keep, losses, 0.0), keep


def masked_cross_entropy(logits: Array, labels: Array, keep: Array) -> Array:
    """Mean float32 cross-entropy over the kept positions."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(keep, labels, 0))
    return jnp.sum(jnp.where(keep, losses, 0.0)) / jnp.sum(keep)


class LlamaForSequenceClassificationModule(nn.Module):
    """Scores every position, pooled at each row's last non-pad token."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False

    @nn.compact
    def __call__(self, input_ids: Array | None = None, attention_mask: Array | None = None,
                 position_ids: Array | None = None, inputs_embeds: Array | None = None,
                 labels: Array | None = None, output_hidden_states: bool = False) -> SequenceClassifierOutput:
        c = self.config
        out = LlamaModule(c, self.dtype, self.param_dtype, scan_layers=self.scan_layers, name="model")(
            input_ids, attention_mask, position_ids, None, inputs_embeds, output_hidden_states=output_hidden_states)
        logits = nn.Dense(c.num_labels, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="score",
                          kernel_init=nn.initializers.normal(c.initializer_range))(out.last_hidden_state)
        batch = logits.shape[0]
        require_pad_for_batch(c, batch)
        if input_ids is None or c.pad_token_id is None:
            last = jnp.full((batch,), logits.shape[1] - 1)
        else:
            not_pad = (input_ids != c.pad_token_id).astype(jnp.int32)
            last = jnp.argmax(jnp.arange(input_ids.shape[1]) * not_pad, axis=-1)
        pooled = logits[jnp.arange(batch), last]
        loss = self._loss(pooled, labels) if labels is not None else None
        return SequenceClassifierOutput(pooled, loss, out.hidden_states)

    def _loss(self, pooled: Array, labels: Array) -> Array:
        kind = sequence_problem_type(self.config, jnp.issubdtype(labels.dtype, jnp.integer))
        if kind == "regression":
            if self.config.num_labels == 1:
                return jnp.mean((pooled.squeeze() - labels.squeeze().astype(pooled.dtype)) ** 2)
            return jnp.mean((pooled - labels.astype(pooled.dtype)) ** 2)
        if kind == "single_label_classification":
            flat = labels.reshape(-1)
            return masked_cross_entropy(pooled.reshape(-1, self.config.num_labels), flat, flat != IGNORE_INDEX)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(pooled, labels.astype(pooled.dtype)))


class LlamaForQuestionAnsweringModule(nn.Module):
    """Start and end logits per token (the base model sits under "transformer", as in transformers)."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False

    @nn.compact
    def __call__(self, input_ids: Array | None = None, attention_mask: Array | None = None,
                 position_ids: Array | None = None, inputs_embeds: Array | None = None,
                 start_positions: Array | None = None, end_positions: Array | None = None,
                 output_hidden_states: bool = False) -> QuestionAnsweringOutput:
        c = self.config
        out = LlamaModule(c, self.dtype, self.param_dtype, scan_layers=self.scan_layers,
                          name="transformer")(
            input_ids, attention_mask, position_ids, None, inputs_embeds, output_hidden_states=output_hidden_states)
        logits = nn.Dense(2, dtype=self.dtype, param_dtype=self.param_dtype, name="qa_outputs",
                          kernel_init=nn.initializers.normal(c.initializer_range))(out.last_hidden_state)
        start, end = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start.shape[1]
            start_positions, end_positions = jnp.clip(start_positions, 0, ignored), jnp.clip(end_positions, 0, ignored)
            loss = (masked_cross_entropy(start, start_positions, start_positions != ignored)
                    + masked_cross_entropy(end, end_positions, end_positions != ignored)) / 2
        return QuestionAnsweringOutput(start, end, loss, out.hidden_states)


class LlamaForTokenClassificationModule(nn.Module):
    """A label per token, after dropout (active when the call passes deterministic=False)."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False

    @nn.compact
    def __call__(self, input_ids: Array | None = None, attention_mask: Array | None = None,
                 position_ids: Array | None = None, inputs_embeds: Array | None = None,
                 labels: Array | None = None, output_hidden_states: bool = False,
                 deterministic: bool = True) -> TokenClassifierOutput:
        c = self.config
        out = LlamaModule(c, self.dtype, self.param_dtype, scan_layers=self.scan_layers, name="model")(
            input_ids, attention_mask, position_ids, None, inputs_embeds, output_hidden_states=output_hidden_states)
        x = nn.Dropout(token_classifier_dropout(c))(out.last_hidden_state, deterministic=deterministic)
        logits = nn.Dense(c.num_labels, dtype=self.dtype, param_dtype=self.param_dtype, name="score",
                          kernel_init=nn.initializers.normal(c.initializer_range))(x)
        loss = None
        if labels is not None:
            flat = labels.reshape(-1)
            loss = masked_cross_entropy(logits.reshape(-1, c.num_labels), flat, flat != IGNORE_INDEX)
        return TokenClassifierOutput(logits, loss, out.hidden_states)


# ------------------------------------------------------------------------------------------------
# The public models: a module, its config and its params (torch: the nn.Modules above).


class FlaxLlamaModel(FlaxPreTrainedModel):
    module_class = LlamaModule
    base_prefix = ""


class FlaxLlamaForCausalLM(LoraMixin, FlaxPreTrainedModel):
    module_class = LlamaForCausalLMModule
    base_prefix = "model"


class FlaxLlamaForSequenceClassification(FlaxPreTrainedModel):
    module_class = LlamaForSequenceClassificationModule
    base_prefix = "model"


class FlaxLlamaForQuestionAnswering(FlaxPreTrainedModel):
    module_class = LlamaForQuestionAnsweringModule
    base_prefix = "transformer"


class FlaxLlamaForTokenClassification(FlaxPreTrainedModel):
    module_class = LlamaForTokenClassificationModule
    base_prefix = "model"
