"""Llama in PyTorch: the twin of llama_flax/modeling.py, class for class and in the same order.

State-dict keys are Hugging Face's exactly. Numerics follow the contract in docs/numerics.md: RMSNorm in
float32 and cast back before the weight, RoPE tables in float32 from llama_shared.rope, softmax in
float32 (scaled_dot_product_attention), GQA without repeating K/V.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from llama_shared import rope
from llama_shared.config import LlamaConfig
from llama_shared.heads import (IGNORE_INDEX, packed_labels, require_pad_for_batch, sequence_problem_type,
                                token_classifier_dropout)
from llama_shared.masks import check_segment_ids, model_attention_allowed, positions_from_segment_ids, query_has_keys
from llama_shared.outputs import (BaseModelOutput, CausalLMOutput, QuestionAnsweringOutput,
                                  SequenceClassifierOutput, TokenClassifierOutput)
from llama_torch.cache import KVCache
from llama_torch.loading import PreTrainedModel
from llama_torch.lora import LoraMixin
from llama_torch.quantization import shared_input_products

ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu,
               "gelu_new": partial(F.gelu, approximate="tanh"),
               "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh")}
# scaled_dot_product_attention takes enable_gqa from torch 2.5 on; 2.4 repeats K/V inside the call.
_SDPA_HAS_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)


class LlamaRMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in float32, cast back to the input dtype, then times the weight."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, seq, heads, head_dim) by the (batch, seq, head_dim) tables."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return x * cos + rotate_half(x) * sin


class LlamaRotaryEmbedding(nn.Module):
    """cos/sin tables for given positions, from llama_shared.rope's frequencies."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", torch.from_numpy(rope.static_inv_freq(config)), persistent=False)
        self.scale = rope.attention_factor(config)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        """Keep the frequencies float32 and exact through .to(dtype), meta and to_empty moves."""
        super()._apply(fn, recurse)
        self.inv_freq = torch.from_numpy(rope.static_inv_freq(self.config)).to(self.inv_freq.device)
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        frequencies = self.inv_freq
        if rope.is_length_dependent(self.config):
            seq_len = int(position_ids.max()) + 1
            frequencies = torch.as_tensor(rope.inv_freq(self.config, seq_len), dtype=torch.float32,
                                          device=position_ids.device)
        cos, sin = rope.rotary_cos_sin(position_ids.float(), frequencies, self.scale, torch)
        return cos.to(dtype), sin.to(dtype)


def dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
                          dropout: float) -> torch.Tensor:
    """Softmax attention of q (batch, seq, heads, head_dim) over k/v (batch, kv_heads, keys, head_dim),
    the cache's layout; K/V keep their kv heads.

    allowed None means plainly causal (no padding, no cache), which lets SDPA pick a fused kernel.
    A query with no allowed key (left padding) outputs zeros.
    """
    q = q.transpose(1, 2)
    groups = q.shape[1] // k.shape[1]
    kwargs = {}
    if groups > 1 and _SDPA_HAS_GQA:
        kwargs["enable_gqa"] = True
    elif groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout,
                                         is_causal=allowed is None, **kwargs).transpose(1, 2)
    return out if allowed is None else torch.where(query_has_keys(allowed), out, 0.0)


class LlamaAttention(nn.Module):
    """Multi-head attention with grouped key/value heads and an optional KV cache."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (config.num_attention_heads,
                                                            config.num_key_value_heads, config.head_dim)
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor | None,
                cache: KVCache | None = None, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = shared_input_products(x, (self.q_proj, self.k_proj, self.v_proj))
        q = q.view(batch, seq, self.num_heads, self.head_dim)
        k = k.view(batch, seq, self.num_kv_heads, self.head_dim)
        v = v.view(batch, seq, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, cache_position)
        dropout = self.config.attention_dropout if self.training else 0.0
        out = dot_product_attention(q, k, v, allowed, dropout)
        return self.o_proj(out.reshape(batch, seq, self.num_heads * self.head_dim))


class LlamaMLP(nn.Module):
    """down(act(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = shared_input_products(x, (self.gate_proj, self.up_proj))
        return self.down_proj(self.act(gate) * up)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor | None,
                cache: KVCache | None = None, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed, cache, cache_position)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(PreTrainedModel):
    """Embeddings, the decoder layers and the final norm."""

    base_prefix = ""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, cache_position: torch.Tensor | None = None,
                output_hidden_states: bool = False, segment_ids: torch.Tensor | None = None) -> BaseModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            self.check_token_ids(input_ids)
            inputs_embeds = self.embed_tokens(input_ids)
        batch, seq, _ = inputs_embeds.shape
        device = inputs_embeds.device
        cached = past_key_values is not None
        check_segment_ids(segment_ids, (batch, seq), cached, attention_mask)
        if cache_position is None:
            cache_position = torch.arange(seq, device=device)
        if position_ids is None and segment_ids is not None:
            position_ids = positions_from_segment_ids(segment_ids, torch, lambda x: torch.cummax(x, dim=-1).values)
        if position_ids is None:
            position_ids = cache_position[None].expand(batch, seq)
        keys = past_key_values.max_length if cached else seq
        allowed = model_attention_allowed(attention_mask, cache_position, torch.arange(keys, device=device), cached,
                                          segment_ids)
        cos, sin = self.rotary_emb(position_ids, inputs_embeds.dtype)

        x = inputs_embeds
        hidden_states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, cos, sin, allowed, past_key_values, cache_position)
            if output_hidden_states:
                hidden_states.append(x)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states[-1] = x
        return BaseModelOutput(x, tuple(hidden_states) if output_hidden_states else None, past_key_values)


class LlamaForCausalLM(LoraMixin, PreTrainedModel):
    """LlamaModel with the language-model head; labels give the shifted cross-entropy loss."""

    base_prefix = "model"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.init_weights()
        self.tie_weights()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                cache_position: torch.Tensor | None = None, logits_to_keep: int | torch.Tensor = 0,
                output_hidden_states: bool = False, segment_ids: torch.Tensor | None = None) -> CausalLMOutput:
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                         cache_position, output_hidden_states, segment_ids)
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(out.last_hidden_state[:, kept])
        loss = causal_lm_loss(logits, labels, segment_ids) if labels is not None else None
        return CausalLMOutput(logits, loss, out.hidden_states, out.past_key_values)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of logits[t] against labels[t+1] in float32, ignoring -100 (and, in a packed
    row, every prediction across a document boundary)."""
    losses, keep = causal_lm_token_losses(logits, labels, segment_ids)
    return losses.sum() / keep.sum()


def causal_lm_token_losses(logits: torch.Tensor, labels: torch.Tensor,
                           segment_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position float32 cross-entropy of logits[t] against labels[t+1] (0 where not scored) and
    the (batch, seq) mask of scored positions."""
    if segment_ids is not None:
        labels = packed_labels(labels, segment_ids, torch)
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    losses = F.cross_entropy(logits.float().transpose(1, 2), shifted, ignore_index=IGNORE_INDEX, reduction="none")
    return losses, shifted != IGNORE_INDEX


class LlamaForSequenceClassification(PreTrainedModel):
    """Scores every position, pooled at each row's last non-pad token."""

    base_prefix = "model"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False) -> SequenceClassifierOutput:
        out = self.model(input_ids, attention_mask, position_ids, None, inputs_embeds,
                         output_hidden_states=output_hidden_states)
        logits = self.score(out.last_hidden_state)
        batch = logits.shape[0]
        require_pad_for_batch(self.config, batch)
        if input_ids is None or self.config.pad_token_id is None:
            last = torch.full((batch,), logits.shape[1] - 1, device=logits.device)
        else:
            not_pad = (input_ids != self.config.pad_token_id).int()
            last = (torch.arange(input_ids.shape[1], device=logits.device) * not_pad).argmax(-1)
        pooled = logits[torch.arange(batch, device=logits.device), last]
        loss = self._loss(pooled, labels) if labels is not None else None
        return SequenceClassifierOutput(pooled, loss, out.hidden_states)

    def _loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kind = sequence_problem_type(self.config, not labels.is_floating_point())
        if kind == "regression":
            if self.config.num_labels == 1:
                return F.mse_loss(pooled.squeeze(), labels.squeeze().to(pooled.dtype))
            return F.mse_loss(pooled, labels.to(pooled.dtype))
        if kind == "single_label_classification":
            return F.cross_entropy(pooled.view(-1, self.config.num_labels).float(), labels.view(-1),
                                   ignore_index=IGNORE_INDEX)
        return F.binary_cross_entropy_with_logits(pooled, labels.to(pooled.dtype))


class LlamaForQuestionAnswering(PreTrainedModel):
    """Start and end logits per token (the base model sits under "transformer", as in transformers)."""

    base_prefix = "transformer"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.transformer = LlamaModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> QuestionAnsweringOutput:
        out = self.transformer(input_ids, attention_mask, position_ids, None, inputs_embeds,
                               output_hidden_states=output_hidden_states)
        start, end = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)
        start, end = start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start.shape[1]
            start_loss = F.cross_entropy(start.float(), start_positions.clamp(0, ignored), ignore_index=ignored)
            end_loss = F.cross_entropy(end.float(), end_positions.clamp(0, ignored), ignore_index=ignored)
            loss = (start_loss + end_loss) / 2
        return QuestionAnsweringOutput(start, end, loss, out.hidden_states)


class LlamaForTokenClassification(PreTrainedModel):
    """A label per token, after dropout."""

    base_prefix = "model"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.dropout = nn.Dropout(token_classifier_dropout(config))
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False) -> TokenClassifierOutput:
        out = self.model(input_ids, attention_mask, position_ids, None, inputs_embeds,
                         output_hidden_states=output_hidden_states)
        logits = self.score(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.num_labels).float(), labels.view(-1),
                                   ignore_index=IGNORE_INDEX)
        return TokenClassifierOutput(logits, loss, out.hidden_states)
