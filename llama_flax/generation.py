"""Text generation for the Flax twin: the whole decode on the device, and transformers' logits
processors. The twin of llama_torch/generation.py, function for function.

Which processors run, in which order, and every argument check come from llama_shared.generation.
generate() runs prefill and every decode step under one jax.jit (a lax.while_loop, no host round
trip per token). With a streamer it runs the same two functions one jitted call at a time, the
decoding state (KV cache included) donated to each step. Prompt and cache lengths are rounded up
to llama_shared's buckets, so a new prompt length rarely means a new compile.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from llama_flax.cache import KVCache
from llama_shared.generation import (DecodePlan, GenerationConfig, bucket_length, can_generate, plan_generation,
                                     resolve_config)
from llama_shared.masks import positions_from_attention_mask

Array = jax.Array

# ------------------------------------------------------------------------------------------------
# Logits processors: (batch, vocab) float32 scores in, scores out; removed tokens get -inf.


def repetition_penalty(scores: Array, seen: Array, penalty: Array) -> Array:
    """Scores of tokens already in the sequence: divided by penalty if positive, times it if negative."""
    penalised = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalised, scores)


def suppress_eos(scores: Array, eos_ids: Array, active: Array) -> Array:
    """-inf for the end-of-sequence tokens while fewer than min_new_tokens have been generated."""
    return jnp.where(active, scores.at[:, eos_ids].set(-jnp.inf), scores)


def apply_temperature(scores: Array, temperature: Array) -> Array:
    return scores / temperature


def top_k_filter(scores: Array, k: int) -> Array:
    """Keep the scores >= the k-th largest (ties kept)."""
    k = min(k, scores.shape[-1])
    kth = jax.lax.top_k(scores, k)[0][..., -1:]
    return jnp.where(scores < kth, -jnp.inf, scores)


def top_p_filter(scores: Array, top_p: Array) -> Array:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (at least one)."""
    order = jnp.argsort(scores, axis=-1)
    ascending = jnp.take_along_axis(scores, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    remove = (cumulative <= 1 - top_p).at[..., -1].set(False)
    rows = jnp.arange(scores.shape[0])[:, None]
    return jnp.where(jnp.zeros_like(remove).at[rows, order].set(remove), -jnp.inf, scores)


def min_p_filter(scores: Array, min_p: Array) -> Array:
    """Drop tokens less likely than min_p times the most likely one."""
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.where(probs < min_p * jnp.max(probs, axis=-1, keepdims=True), -jnp.inf, scores)


class SamplingValues(NamedTuple):
    """The traced numbers of a call (changing them does not recompile)."""

    temperature: Array
    top_p: Array
    min_p: Array
    repetition_penalty: Array
    max_new_tokens: Array
    min_new_tokens: Array
    pad_token_id: Array
    eos_token_ids: Array


class DecodeSettings(NamedTuple):
    """The static choices of a call: one compile per distinct value (and per shape bucket)."""

    processors: tuple[str, ...]
    do_sample: bool
    top_k: int
    cache_length: int


def process_logits(scores: Array, settings: DecodeSettings, values: SamplingValues, seen: Array | None,
                   new_tokens: Array) -> Array:
    """Run the plan's processors in transformers' order."""
    for name in settings.processors:
        if name == "repetition_penalty":
            scores = repetition_penalty(scores, seen, values.repetition_penalty)
        elif name == "min_new_tokens":
            scores = suppress_eos(scores, values.eos_token_ids, new_tokens < values.min_new_tokens)
        elif name == "temperature":
            scores = apply_temperature(scores, values.temperature)
        elif name == "top_k":
            scores = top_k_filter(scores, settings.top_k)
        elif name == "top_p":
            scores = top_p_filter(scores, values.top_p)
        elif name == "min_p":
            scores = min_p_filter(scores, values.min_p)
    return scores


def select_tokens(scores: Array, do_sample: bool, key: Array) -> Array:
    """The next token of each row: argmax, or a draw from softmax(scores)."""
    if not do_sample:
        return jnp.argmax(scores, axis=-1)
    return jax.random.categorical(key, scores, axis=-1)


# ------------------------------------------------------------------------------------------------
# Model steps


def prefill(module: Any, params: Any, input_ids: Array, attention_mask: Array, position_ids: Array,
            cache: KVCache) -> tuple[Array, KVCache]:
    """Run the prompt through the model, filling cache slots [0, prompt); float32 last-position logits."""
    out = module.apply({"params": params}, input_ids, attention_mask, position_ids, cache,
                       cache_position=jnp.arange(input_ids.shape[1]), logits_to_keep=1)
    return out.logits[:, -1].astype(jnp.float32), out.past_key_values


def decode_step(module: Any, params: Any, tokens: Array, position_ids: Array, cache_position: Array,
                attention_mask: Array, cache: KVCache) -> tuple[Array, KVCache]:
    """One token per row at cache slot cache_position; float32 logits (batch, vocab) and the new cache."""
    out = module.apply({"params": params}, tokens, attention_mask, position_ids, cache,
                       cache_position=cache_position)
    return out.logits[:, -1].astype(jnp.float32), out.past_key_values


# ------------------------------------------------------------------------------------------------
# The decoding state and its two moves (start, advance), jitted alone or inside one while_loop


@flax.struct.dataclass
class DecodeState:
    """Everything a decode step reads and writes; donated from one step to the next."""

    new_tokens: Array        # (batch, cache_length - prompt): generated ids, pad past the end
    count: Array             # () tokens generated so far
    unfinished: Array        # (batch,) rows that have not met an eos token
    seen: Array | None       # (batch, vocab) tokens in each row, for the repetition penalty
    position: Array          # (batch, 1) position id of the last generated token
    attention_mask: Array    # (batch, cache_length) 1 for real tokens and every new slot
    cache: KVCache
    key: Array


def _choose(state: DecodeState, logits: Array, settings: DecodeSettings, values: SamplingValues) -> DecodeState:
    """Process the logits, pick each row's token, record it and update the row's state."""
    scores = process_logits(logits, settings, values, state.seen, state.count)
    tokens = select_tokens(scores, settings.do_sample, jax.random.fold_in(state.key, state.count))
    tokens = jnp.where(state.unfinished, tokens, values.pad_token_id).astype(jnp.int32)
    new_tokens = jax.lax.dynamic_update_slice(state.new_tokens, tokens[:, None], (0, state.count))
    seen = state.seen
    if seen is not None:
        seen = seen.at[jnp.arange(tokens.shape[0]), tokens].set(True)
    unfinished = state.unfinished & ~jnp.isin(tokens, values.eos_token_ids)
    return state.replace(new_tokens=new_tokens, count=state.count + 1, unfinished=unfinished, seen=seen)


def start(module: Any, params: Any, input_ids: Array, attention_mask: Array, prompt_start: Array,
          values: SamplingValues, key: Array, settings: DecodeSettings) -> DecodeState:
    """Prefill a fresh zeroed cache with the (bucket-padded) prompt and choose the first token.

    prompt_start is the first column of the caller's prompt: columns before it are bucket padding,
    left out of the repetition penalty's token set.
    """
    batch, prompt = input_ids.shape
    length = settings.cache_length
    cache = KVCache.create(module.config, batch, length, module.dtype, stacked=module.scan_layers)
    full_mask = jnp.ones((batch, length), jnp.int32).at[:, :prompt].set(attention_mask)
    position_ids = positions_from_attention_mask(attention_mask, jnp)
    logits, cache = prefill(module, params, input_ids, full_mask, position_ids, cache)
    seen = None
    if "repetition_penalty" in settings.processors:
        rows = jnp.arange(batch)[:, None]
        in_prompt = jnp.arange(prompt)[None, :] >= prompt_start
        seen = jnp.zeros((batch, module.config.vocab_size), bool).at[rows, input_ids].max(in_prompt)
    state = DecodeState(new_tokens=jnp.broadcast_to(values.pad_token_id, (batch, length - prompt)).astype(jnp.int32),
                        count=jnp.zeros((), jnp.int32), unfinished=jnp.ones((batch,), bool), seen=seen,
                        position=position_ids[:, -1:], attention_mask=full_mask, cache=cache, key=key)
    return _choose(state, logits, settings, values)


def advance(module: Any, params: Any, state: DecodeState, values: SamplingValues,
            settings: DecodeSettings) -> DecodeState:
    """Feed the last chosen tokens through the model and choose the next ones."""
    prompt = settings.cache_length - state.new_tokens.shape[1]
    last = jax.lax.dynamic_slice_in_dim(state.new_tokens, state.count - 1, 1, axis=1)
    position = state.position + 1
    cache_position = (prompt + state.count - 1)[None]
    logits, cache = decode_step(module, params, last, position, cache_position, state.attention_mask, state.cache)
    return _choose(state.replace(position=position, cache=cache), logits, settings, values)


def is_running(state: DecodeState, values: SamplingValues) -> Array:
    """Another step is due: some row is unfinished and max_new_tokens is not reached."""
    return (state.count < values.max_new_tokens) & jnp.any(state.unfinished)


def generate_loop(module: Any, params: Any, input_ids: Array, attention_mask: Array, prompt_start: Array,
                  values: SamplingValues, key: Array, settings: DecodeSettings) -> tuple[Array, Array]:
    """start, then advance inside a lax.while_loop until done: the whole decode as one program."""
    state = start(module, params, input_ids, attention_mask, prompt_start, values, key, settings)
    state = jax.lax.while_loop(partial(is_running, values=values),
                               partial(advance, module, params, values=values, settings=settings), state)
    return state.new_tokens, state.count


_start_jit = jax.jit(start, static_argnames=("module", "settings"))
_advance_jit = jax.jit(advance, static_argnames=("module", "settings"), donate_argnames=("state",))
_is_running_jit = jax.jit(is_running)
_generate_loop_jit = jax.jit(generate_loop, static_argnames=("module", "settings"))


# ------------------------------------------------------------------------------------------------
# generate


class GenerationMixin:
    """generate() for the Flax models; reads the model's GenerationConfig (generation_config.json)."""

    def generation_defaults(self) -> GenerationConfig:
        """The model's generation_config, or one made from its config's token ids."""
        return getattr(self, "generation_config", None) or GenerationConfig.from_model_config(self.config)

    def can_generate(self) -> bool:
        return can_generate(self.architecture)

    def generate(self, input_ids: Any, attention_mask: Any = None, *,
                 max_new_tokens: int | None = None, max_length: int | None = None,
                 min_new_tokens: int | None = None, min_length: int | None = None, do_sample: bool | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, repetition_penalty: float | None = None,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 seed: int | None = None, streamer: Any = None, generation_config: GenerationConfig | None = None,
                 params: Any = None, stats: dict | None = None) -> Array:
        """Prompt ids (batch, length), left-padded, to (batch, length + new) ids, as transformers' generate.

        Arguments left None come from generation_config (else the model's). Finished rows are filled
        with pad_token_id; decoding stops when every row has met an eos token or max_new_tokens.
        seed makes sampling reproducible (else a fresh seed is drawn). Without a streamer the whole
        decode is one jitted program; a streamer (put(ids) for the prompt and each new token, then
        end()) runs it step by step. A dict passed as stats receives compile_s, time_to_first_token_s,
        decode_s and new_tokens; compile time is kept out of the other two.
        """
        if not self.can_generate():
            raise TypeError(f"{type(self).__name__} has no language-model head; use FlaxLlamaForCausalLM to generate")
        config = resolve_config(self.generation_defaults(), generation_config, max_new_tokens=max_new_tokens,
                                max_length=max_length, min_new_tokens=min_new_tokens, min_length=min_length,
                                do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                                pad_token_id=pad_token_id)
        host_ids = np.asarray(input_ids)
        host_mask = np.ones_like(host_ids) if attention_mask is None else np.asarray(attention_mask)
        plan = plan_generation(host_ids, host_mask, config, self.config, max_length_given=max_length is not None)
        ids, mask, prompt_start, settings = _bucketed(host_ids, host_mask, plan)
        values = sampling_values(plan)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        key = jax.random.key(seed)
        params = self.params if params is None else params
        args = (params, ids, mask, prompt_start, values, key)
        timings = {"compile_s": 0.0}
        if streamer is None:
            run = self._compiled(_generate_loop_jit, settings, args, timings)
            began = time.perf_counter()
            new_tokens, count = run(*args)
            count = int(count)
            timings.update(time_to_first_token_s=None, decode_s=time.perf_counter() - began)
        else:
            new_tokens, count = self._stream(args, settings, values, streamer, timings)
        if stats is not None:
            stats.update(timings, new_tokens=count)
        return jnp.concatenate([jnp.asarray(host_ids, jnp.int32), new_tokens[:, :count]], axis=1)

    def _stream(self, args: tuple, settings: DecodeSettings, values: SamplingValues, streamer: Any,
                timings: dict) -> tuple[Array, int]:
        """start and advance as separate jitted calls, handing each new token to the streamer."""
        params = args[0]
        first = self._compiled(_start_jit, settings, args, timings)
        state_shape = jax.eval_shape(partial(start, self.module, settings=settings), *args)
        step = self._compiled(_advance_jit, settings, (params, state_shape, values), timings)
        began = time.perf_counter()
        streamer.put(np.asarray(args[1])[:, int(args[3]):])
        state = first(*args)
        streamer.put(np.asarray(state.new_tokens[:, 0]))
        timings["time_to_first_token_s"] = time.perf_counter() - began
        while bool(_is_running_jit(state, values)):
            state = step(params, state, values)
            streamer.put(np.asarray(state.new_tokens[:, int(state.count) - 1]))
        streamer.end()
        timings["decode_s"] = time.perf_counter() - began - timings["time_to_first_token_s"]
        return state.new_tokens, int(state.count)

    def _compiled(self, function: Any, settings: DecodeSettings, args: tuple, timings: dict) -> Any:
        """function lowered and compiled for these argument shapes, once per model; adds to compile_s."""
        compiled = self.__dict__.setdefault("_compiled_generation", {})
        shapes = jax.tree_util.tree_map(lambda a: (tuple(a.shape), str(a.dtype)), args)
        signature = (function, settings, jax.tree_util.tree_structure(args), str(shapes))
        if signature not in compiled:
            began = time.perf_counter()
            compiled[signature] = function.lower(self.module, *args, settings=settings).compile()
            timings["compile_s"] += time.perf_counter() - began
        return compiled[signature]


def _bucketed(ids: np.ndarray, mask: np.ndarray, plan: DecodePlan) -> tuple[Array, Array, Array, DecodeSettings]:
    """Left-pad the prompt to its length bucket and size the cache for bucket + max_new_tokens."""
    prompt = bucket_length(plan.prompt_length)
    extra = prompt - plan.prompt_length
    ids = np.pad(ids, ((0, 0), (extra, 0)), constant_values=plan.pad_token_id).astype(np.int32)
    mask = np.pad(mask, ((0, 0), (extra, 0))).astype(np.int32)
    config = plan.config
    settings = DecodeSettings(plan.processors, bool(config.do_sample), int(config.top_k or 0),
                              bucket_length(prompt + plan.max_new_tokens))
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(extra, jnp.int32), settings


def sampling_values(plan: DecodePlan) -> SamplingValues:
    """The plan's numbers as traced device scalars (an absent eos is -1, which no token matches)."""
    config = plan.config
    eos = plan.eos_token_ids or (-1,)
    return SamplingValues(temperature=jnp.float32(config.temperature), top_p=jnp.float32(config.top_p),
                          min_p=jnp.float32(config.min_p or 0.0),
                          repetition_penalty=jnp.float32(config.repetition_penalty),
                          max_new_tokens=jnp.int32(plan.max_new_tokens), min_new_tokens=jnp.int32(plan.min_new_tokens),
                          pad_token_id=jnp.int32(plan.pad_token_id), eos_token_ids=jnp.asarray(eos, jnp.int32))
