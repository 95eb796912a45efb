"""GPU decode and prefill of one twin at the Llama-2-7B shape in bf16 (random weights), JSON under $OUT.

Run by benchmarks/gpu/run.sh beside the transformers anchors (../shared/bench/gpu_anchor_hf_*.py)
in the same device call, so each ratio comes from one machine. One backend per process (each
framework keeps its own 13.5 GB copy of the weights). SIZE=tiny is a CPU dry run.

    python -m benchmarks.gpu.decode_gpu --backend flax|torch
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks.timing import best_time

SIZE = os.environ.get("SIZE", "7b")
DEADLINE = time.time() + float(os.environ.get("DEADLINE_S", "1e9"))
OUT = os.environ.get("OUT", "/tmp")
SHAPES = {
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "tiny": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                 num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096),
}
PREFILL = 2048 if SIZE == "7b" else 128
PROMPT, NEW = 32, (128 if SIZE == "7b" else 16)
BATCHES = (1, 16) if SIZE == "7b" else (1, 2)


def config():
    from llama_shared.config import LlamaConfig

    return LlamaConfig(**SHAPES[SIZE], pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.02)


def decode_entry(batch: int, seconds: float, warmup_s: float) -> dict:
    return {"s": round(seconds, 4), "tok_s_per_seq": round(NEW / seconds, 1),
            "tok_s_total": round(batch * NEW / seconds, 1), "warmup_s": round(warmup_s, 1)}


def run_flax(results: dict) -> None:
    import jax
    import jax.numpy as jnp

    from llama_flax import FlaxLlamaForCausalLM

    dtype = jnp.bfloat16 if SIZE == "7b" else jnp.float32
    began = time.perf_counter()
    model = FlaxLlamaForCausalLM(config(), dtype=dtype, param_dtype=dtype)
    jax.block_until_ready(model.params)
    results.update(device=str(jax.devices()[0]), jax=jax.__version__,
                   params=int(sum(x.size for x in jax.tree_util.tree_leaves(model.params))))
    record(results, "random_init_s", round(time.perf_counter() - began, 1))
    for batch in BATCHES:
        if time.time() > DEADLINE - 40:
            print(f"flax: skipped batch {batch} (deadline)", flush=True)
            continue
        prompt = np.random.default_rng(batch).integers(3, 32000, (batch, PROMPT))
        began = time.perf_counter()
        model.generate(prompt, max_new_tokens=NEW, eos_token_id=[])
        warmup = time.perf_counter() - began
        seconds = best_time(lambda: np.asarray(model.generate(prompt, max_new_tokens=NEW, eos_token_id=[])))
        record(results, f"decode_b{batch}", decode_entry(batch, seconds, warmup))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 32000, (1, PREFILL)), jnp.int32)
    forward = jax.jit(lambda params, ids: model.module.apply({"params": params}, ids, logits_to_keep=1).logits)
    jax.block_until_ready(forward(model.params, ids))
    seconds = best_time(lambda: jax.block_until_ready(forward(model.params, ids)))
    record(results, "prefill", {"s": round(seconds, 4), "tok_s": round(PREFILL / seconds)})


def random_torch_model():
    """The torch twin with random weights, built on the meta device and initialised in place on the
    GPU (bf16 at 7B; the CPU and float32 for SIZE=tiny): (model, device, sync)."""
    import torch

    from llama_torch import LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if SIZE == "7b" else torch.float32
    with torch.device("meta"):
        model = LlamaForCausalLM(config())
    model = model.to(dtype).to_empty(device=device)
    model.init_weights()
    model.tie_weights()
    model.eval()
    return model, device, torch.cuda.synchronize if device == "cuda" else (lambda: None)


def run_torch(results: dict) -> None:
    import torch

    model, device, sync = random_torch_model()
    results.update(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
                   params=sum(p.numel() for p in model.parameters()))
    # Batch 1 first, eager then compiled (the goals), then batch 16 while time allows.
    runs = [(False, BATCHES[0]), (True, BATCHES[0]), (True, BATCHES[1]), (False, BATCHES[1])]
    for compiled, batch in runs:
        name = f"decode_b{batch}_" + ("compiled" if compiled else "eager")
        if (compiled and device != "cuda") or time.time() > DEADLINE - 45:
            continue
        prompt = torch.randint(3, 32000, (batch, PROMPT))
        began = time.perf_counter()
        model.generate(prompt, max_new_tokens=NEW, eos_token_id=[], compile=compiled)
        sync()
        warmup = time.perf_counter() - began
        seconds = best_time(lambda: (model.generate(prompt, max_new_tokens=NEW, eos_token_id=[], compile=compiled),
                                     sync()))
        record(results, name, decode_entry(batch, seconds, warmup))
    ids = torch.randint(3, 32000, (1, PREFILL), device=device)
    with torch.inference_mode():
        model(ids, logits_to_keep=1)
        sync()
        seconds = best_time(lambda: (model(ids, logits_to_keep=1), sync()))
    record(results, "prefill", {"s": round(seconds, 4), "tok_s": round(PREFILL / seconds)})


def record(results: dict, name: str, entry: dict) -> None:
    """Print one stage and rewrite the JSON at once, so a run stopped by its deadline keeps what it measured."""
    results[name] = entry
    print(f"{results['backend']} {name}: {entry}", flush=True)
    with open(os.path.join(OUT, f"twin_{results['backend']}.json"), "w") as f:
        json.dump(results, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("flax", "torch"), required=True)
    args = parser.parse_args()
    began = time.time()
    results = {"backend": args.backend, "size": SIZE, "prefill_tokens": PREFILL, "prompt": PROMPT, "new_tokens": NEW}
    try:
        (run_flax if args.backend == "flax" else run_torch)(results)
    except Exception as e:  # noqa: BLE001 - the JSON must record a failure, and the next stage still run
        record(results, "error", repr(e)[:500])
    record(results, "total_s", round(time.time() - began, 1))


if __name__ == "__main__":
    main()
