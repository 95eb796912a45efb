"""Text generation for the torch twin: a static KV cache, a decode step torch.compile can capture,
and transformers' logits processors. The twin of llama_flax/generation.py, function for function.

Which processors run, in which order, and every argument check come from llama_shared.generation.
On CUDA the one-token decode step is compiled with mode="reduce-overhead" (CUDA graphs) over a
cache allocated once per shape, with coordinate-descent tuning (gpt-fast's setting), under which
inductor turns one-row matmuls into fused Triton reductions instead of separate GEMV launches. On
the CPU it runs eagerly under inference_mode by default; with compile=True inductor freezes the
weights and runs its own C++ GEMM kernels on a prepacked copy of them, which stream the weights
faster than MKL's matrix-vector product, at the price of a second copy of the weights
(docs/performance.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import types
from collections.abc import Iterator
from typing import Any

import torch

from llama_shared.generation import DecodePlan, GenerationConfig, can_generate, plan_generation, resolve_config
from llama_shared.masks import positions_from_attention_mask
from llama_torch.cache import KVCache

# True while generate() runs the model: it checked the prompt's ids on the host and picks every later
# token from the vocabulary, so forward skips its own range check, whose min/max copy to the host
# would stall a GPU at every step.
TOKEN_IDS_CHECKED = contextvars.ContextVar("token_ids_checked", default=False)


@contextlib.contextmanager
def token_ids_checked() -> Iterator[None]:
    """Within: forward trusts its input_ids (see TOKEN_IDS_CHECKED)."""
    token = TOKEN_IDS_CHECKED.set(True)
    try:
        yield
    finally:
        TOKEN_IDS_CHECKED.reset(token)


# ------------------------------------------------------------------------------------------------
# Logits processors: (batch, vocab) float32 scores in, scores out; removed tokens get -inf.


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scores of tokens already in the sequence: divided by penalty if positive, times it if negative."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def suppress_eos(scores: torch.Tensor, eos_ids: torch.Tensor, active: bool) -> torch.Tensor:
    """-inf for the end-of-sequence tokens while fewer than min_new_tokens have been generated."""
    if not active:
        return scores
    return scores.index_fill(-1, eos_ids, -float("inf"))


def apply_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    return scores / temperature


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the scores >= the k-th largest (ties kept)."""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, -float("inf"))


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (at least one)."""
    ascending, order = torch.sort(scores, dim=-1)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= 1 - top_p
    remove[..., -1] = False
    return scores.masked_fill(remove.scatter(-1, order, remove), -float("inf"))


def min_p_filter(scores: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens less likely than min_p times the most likely one."""
    probs = scores.softmax(dim=-1)
    return scores.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), -float("inf"))


def process_logits(scores: torch.Tensor, plan: DecodePlan, seen: torch.Tensor | None, eos_ids: torch.Tensor,
                   new_tokens: int) -> torch.Tensor:
    """Run the plan's processors in transformers' order."""
    config = plan.config
    for name in plan.processors:
        if name == "repetition_penalty":
            scores = repetition_penalty(scores, seen, config.repetition_penalty)
        elif name == "min_new_tokens":
            scores = suppress_eos(scores, eos_ids, new_tokens < plan.min_new_tokens)
        elif name == "temperature":
            scores = apply_temperature(scores, config.temperature)
        elif name == "top_k":
            scores = top_k_filter(scores, config.top_k)
        elif name == "top_p":
            scores = top_p_filter(scores, config.top_p)
        elif name == "min_p":
            scores = min_p_filter(scores, config.min_p)
    return scores


def select_tokens(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row: argmax, or a draw from softmax(scores)."""
    if not do_sample:
        return scores.argmax(dim=-1)
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(-1)


# ------------------------------------------------------------------------------------------------
# Model steps


def prefill(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
            cache: KVCache) -> torch.Tensor:
    """Run the prompt through the model, filling cache slots [0, prompt); float32 last-position logits."""
    cache_position = torch.arange(input_ids.shape[1], device=input_ids.device)
    out = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
                cache_position=cache_position, logits_to_keep=1)
    return out.logits[:, -1].float()


def decode_step(model: Any, tokens: torch.Tensor, position_ids: torch.Tensor, cache_position: torch.Tensor,
                attention_mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One token per row at cache slot cache_position; float32 logits (batch, vocab). Fixed shapes,
    in-place cache writes: what torch.compile captures as one CUDA graph."""
    out = model(tokens, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
                cache_position=cache_position)
    return out.logits[:, -1].float()


def seconds_since(start: float, device: torch.device) -> float:
    """Wall time since start once the device has run all it was given: CUDA runs behind Python, so
    without the wait a timing would count only the queuing of the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
# generate


class GenerationMixin:
    """generate() for the torch models; reads the model's GenerationConfig (generation_config.json)."""

    def generation_defaults(self) -> GenerationConfig:
        """The model's generation_config, or one made from its config's token ids."""
        return getattr(self, "generation_config", None) or GenerationConfig.from_model_config(self.config)

    def can_generate(self) -> bool:
        return can_generate(self.architecture)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int | None = None, max_length: int | None = None,
                 min_new_tokens: int | None = None, min_length: int | None = None, do_sample: bool | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, repetition_penalty: float | None = None,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 seed: int | None = None, streamer: Any = None, generation_config: GenerationConfig | None = None,
                 compile: bool | None = None, stats: dict | None = None) -> torch.Tensor:
        """Prompt ids (batch, length), left-padded, to (batch, length + new) ids, as transformers' generate.

        Arguments left None come from generation_config (else the model's). Finished rows are filled
        with pad_token_id; decoding stops when every row has met an eos token or max_new_tokens.
        seed makes sampling reproducible (else torch's global generator is used). streamer gets
        put(ids) for the prompt and each new token, then end(). compile (default: on CUDA) captures the
        decode step with torch.compile(mode="reduce-overhead"). A dict passed as stats receives
        time_to_first_token_s, decode_s and new_tokens.
        """
        if not self.can_generate():
            raise TypeError(f"{type(self).__name__} has no language-model head; use LlamaForCausalLM to generate")
        config = resolve_config(self.generation_defaults(), generation_config, max_new_tokens=max_new_tokens,
                                max_length=max_length, min_new_tokens=min_new_tokens, min_length=min_length,
                                do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                                pad_token_id=pad_token_id)
        input_ids = torch.as_tensor(input_ids)
        plan = plan_generation(input_ids.cpu().numpy(),
                               None if attention_mask is None else torch.as_tensor(attention_mask).cpu().numpy(),
                               config, self.config, max_length_given=max_length is not None)
        device = self.device
        if compile is None:
            compile = device.type == "cuda"
        generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
        start = time.perf_counter()

        batch, prompt_length = input_ids.shape
        input_ids = input_ids.to(device)
        mask = (torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask)).to(device)
        full_mask = torch.ones(batch, plan.cache_length, dtype=mask.dtype, device=device)
        full_mask[:, :prompt_length] = mask
        position_ids = positions_from_attention_mask(mask, torch)
        next_position = position_ids[:, -1:] + 1
        eos_ids = torch.tensor(plan.eos_token_ids, dtype=torch.long, device=device)
        seen = None
        if "repetition_penalty" in plan.processors:
            seen = torch.zeros(batch, self.config.vocab_size, dtype=torch.bool, device=device)
            seen.scatter_(1, input_ids, True)
        if streamer is not None:
            streamer.put(input_ids.cpu())

        cache = self._decode_cache(batch, plan.cache_length, compile)
        step = self._decode_step_fn(compile)
        with token_ids_checked():
            logits = prefill(self, input_ids, full_mask, position_ids, cache)
            unfinished = torch.ones(batch, dtype=torch.bool, device=device)
            new_tokens = torch.full((batch, plan.max_new_tokens), plan.pad_token_id, dtype=torch.long, device=device)
            first_token_s = None
            count = 0
            while count < plan.max_new_tokens:
                scores = process_logits(logits, plan, seen, eos_ids, count)
                tokens = select_tokens(scores, config.do_sample, generator)
                tokens = torch.where(unfinished, tokens, plan.pad_token_id)
                new_tokens[:, count] = tokens
                count += 1
                if seen is not None:
                    seen.scatter_(1, tokens[:, None], True)
                if streamer is not None:
                    streamer.put(tokens.cpu())
                if first_token_s is None:
                    first_token_s = seconds_since(start, device)
                if eos_ids.numel():
                    unfinished &= ~torch.isin(tokens, eos_ids)
                    if not bool(unfinished.any()):
                        break
                if count == plan.max_new_tokens:
                    break
                cache_position = torch.full((1,), prompt_length + count - 1, dtype=torch.long, device=device)
                logits = step(self, tokens[:, None], next_position, cache_position, full_mask, cache)
                next_position = next_position + 1
        if streamer is not None:
            streamer.end()
        if stats is not None:
            stats.update(time_to_first_token_s=first_token_s, decode_s=seconds_since(start, device) - first_token_s,
                         new_tokens=count)
        return torch.cat([input_ids, new_tokens[:, :count]], dim=1)

    def _decode_cache(self, batch: int, length: int, compiled: bool) -> KVCache:
        """A zeroed cache; the compiled path reuses one per shape so its CUDA graph keeps its addresses."""
        kv_heads = self._held_kv_heads()
        if not compiled:
            return KVCache(self.config, batch, length, self.dtype, self.device, kv_heads)
        caches = self.__dict__.setdefault("_static_caches", {})
        key = (batch, length, self.dtype, self.device)
        if key not in caches:
            cache = KVCache(self.config, batch, length, self.dtype, self.device, kv_heads)
            for tensor in (*cache.keys, *cache.values):
                torch._dynamo.mark_static_address(tensor)
            caches[key] = cache
        caches[key].reset()
        return caches[key]

    def _held_kv_heads(self) -> int:
        """Key/value heads this process computes: all, or its share under tensor parallelism
        (llama_torch.sharding sets each attention module's count)."""
        return next(module.num_kv_heads for module in self.modules() if hasattr(module, "num_kv_heads"))

    def _decode_step_fn(self, compiled: bool) -> Any:
        """decode_step, compiled once per model when asked: CUDA graphs on a GPU, frozen weights on the
        CPU (compiled again when a parameter or buffer, quantized weights included, has changed
        since: freezing bakes their values in)."""
        if not compiled:
            return decode_step
        if self.device.type == "cuda":
            if "_cuda_decode_step" not in self.__dict__:
                self.__dict__["_cuda_decode_step"] = cuda_graph_step(decode_step)
            return self.__dict__["_cuda_decode_step"]
        version = tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))
        if self.__dict__.get("_cpu_decode_step", (None,))[0] != version:
            self.__dict__["_cpu_decode_step"] = (version, frozen_cpu_step(decode_step))
        return self.__dict__["_cpu_decode_step"][1]


def cuda_graph_step(step: Any) -> Any:
    """step captured as one CUDA graph, its Triton kernels tuned by coordinate descent when first run."""
    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    return with_inductor_config(compiled, coordinate_descent_tuning=True)


def frozen_cpu_step(step: Any) -> Any:
    """step compiled for the CPU with inductor's C++ GEMM templates over frozen, prepacked weights
    (max_autotune picks them or aten's kernel per matmul shape)."""
    # Dynamo keeps compiled graphs on the function's code object: a private copy of it keeps these
    # frozen weights from being reused by a later compile and frees them with this step.
    private = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__, step.__defaults__)
    compiled = torch.compile(private, fullgraph=True, dynamic=False,
                             options={"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"})
    return with_inductor_config(compiled, freezing=True)


def with_inductor_config(compiled: Any, **settings: Any) -> Any:
    """compiled, run with these global inductor settings switched on around each call: compiling and
    autotuning happen inside calls, and these settings are read there (passed as torch.compile's
    options they are not: freezing is silently ignored)."""
    from torch._inductor import config as inductor_config

    def step(*args: Any) -> torch.Tensor:
        with inductor_config.patch(**settings):
            return compiled(*args)

    return step
