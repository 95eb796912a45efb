"""GPU batch-1 decode of int4-g128 / int8 weight-only models beside bf16, Llama-2-7B shape (issue 7).

Random bf16 weights built in memory (no checkpoint on disk); both twins decode greedily with
their own generate() from a 32-token prompt, 128 new tokens. Prints tokens/s, the ratio to the
bf16 model of the same twin, and model-bandwidth utilisation against 3.0 TB/s (anchors.md). Run
beside the anchor scripts in the same call. SIZE=tiny dry-runs the same code on the CPU.

    SIZE=7b python -m benchmarks.gpu.quant_gpu         # SIZE=tiny for a CPU dry run
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from llama_flax import quantization as flax_quant
from llama_flax.modeling import FlaxLlamaForCausalLM
from llama_shared.config import LlamaConfig
from llama_torch import quantization as torch_quant
from llama_torch.modeling import LlamaForCausalLM

SIZE = os.environ.get("SIZE", "7b")
CONFIG = LlamaConfig.from_preset("llama-2-7b", eos_token_id=None) if SIZE == "7b" else LlamaConfig(
    hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4, vocab_size=1024,
    eos_token_id=None)
PROMPT, NEW_TOKENS = (32, 128) if SIZE == "7b" else (8, 8)
BANDWIDTH = 3.0e12
MODES = [("bf16", None, None), ("int8", "int8", None), ("int4-g128", "int4", 128)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def weight_bytes(state: dict) -> int:
    """Bytes read per decode step: every tensor except the embedding table (a gather)."""
    return sum(t.numel() * t.element_size() for k, t in state.items() if "embed_tokens" not in k)


def timed(run) -> float:
    run()
    start = time.perf_counter()
    run()
    return NEW_TOKENS / (time.perf_counter() - start)


def torch_model(quantization: str | None, group_size: int | None) -> LlamaForCausalLM:
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(CONFIG).to(torch.bfloat16).eval()
    if quantization:
        torch_quant.quantize(model, quantization, group_size)
    return model


def main() -> None:
    prompt = np.random.default_rng(0).integers(3, CONFIG.vocab_size, (1, PROMPT))
    print(f"SIZE={SIZE} on {DEVICE}: torch {torch.__version__}, jax {jax.__version__} ({jax.default_backend()})")
    rows = []
    for name, quantization, group_size in MODES:
        model = torch_model(quantization, group_size)
        ids = torch.from_numpy(prompt).to(DEVICE)
        step_bytes = weight_bytes(model.state_dict())
        with torch.no_grad():
            for compiled in (False, True):
                def run():
                    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, compile=compiled)
                    torch.cuda.synchronize() if DEVICE == "cuda" else None
                    return out
                rows.append((f"torch {'compiled' if compiled else 'eager'}", name, timed(run), step_bytes))
        del model
        flax = FlaxLlamaForCausalLM(CONFIG, dtype=jnp.bfloat16)
        if quantization:
            flax_quant.quantize(flax, quantization, group_size)
        flax_ids = jnp.asarray(prompt)
        rows.append(("flax jit", name, timed(lambda: jax.block_until_ready(
            flax.generate(flax_ids, max_new_tokens=NEW_TOKENS, do_sample=False))), step_bytes))
        del flax
    reference = {twin: tps for twin, name, tps, _ in rows if name == "bf16"}
    print("| twin | weights | tok/s | vs bf16 | MBU (3.0 TB/s) |")
    print("|---|---|---|---|---|")
    for twin, name, tps, step_bytes in rows:
        print(f"| {twin} | {name} | {tps:.1f} | {tps / reference[twin]:.2f}x | {tps * step_bytes / BANDWIDTH:.0%} |")


if __name__ == "__main__":
    main()
