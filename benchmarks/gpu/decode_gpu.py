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


def run_flax() -> dict:
    import jax
    import jax.numpy as jnp

    from llama_flax import FlaxLlamaForCausalLM

    dtype = jnp.bfloat16 if SIZE == "7b" else jnp.float32
    model = FlaxLlamaForCausalLM(config(), dtype=dtype, param_dtype=dtype)
    results = {"device": str(jax.devices()[0]), "jax": jax.__version__,
               "params": int(sum(x.size for x in jax.tree_util.tree_leaves(model.params)))}
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 32000, (1, PREFILL)), jnp.int32)
    forward = jax.jit(lambda params, ids: model.module.apply({"params": params}, ids, logits_to_keep=1).logits)
    jax.block_until_ready(forward(model.params, ids))
    seconds = best_time(lambda: jax.block_until_ready(forward(model.params, ids)))
    results["prefill"] = {"s": round(seconds, 4), "tok_s": round(PREFILL / seconds)}
    for batch in BATCHES:
        prompt = np.random.default_rng(batch).integers(3, 32000, (batch, PROMPT))
        stats = {}
        model.generate(prompt, max_new_tokens=NEW, eos_token_id=[], stats=stats)
        compile_s = stats["compile_s"]
        seconds = best_time(lambda: np.asarray(model.generate(prompt, max_new_tokens=NEW, eos_token_id=[])))
        results[f"decode_b{batch}"] = {"s": round(seconds, 4), "tok_s_per_seq": round(NEW / seconds, 1),
                                       "tok_s_total": round(batch * NEW / seconds, 1), "compile_s": round(compile_s, 1)}
        print(f"flax batch {batch}: {results[f'decode_b{batch}']}", flush=True)
    return results


def run_torch() -> dict:
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
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "params": sum(p.numel() for p in model.parameters())}
    ids = torch.randint(3, 32000, (1, PREFILL), device=device)
    with torch.inference_mode():
        model(ids, logits_to_keep=1)
        sync()
        seconds = best_time(lambda: (model(ids, logits_to_keep=1), sync()))
    results["prefill"] = {"s": round(seconds, 4), "tok_s": round(PREFILL / seconds)}
    for compiled in ((False, True) if device == "cuda" else (False,)):
        for batch in BATCHES:
            prompt = torch.randint(3, 32000, (batch, PROMPT))
            began = time.perf_counter()
            model.generate(prompt, max_new_tokens=NEW, eos_token_id=[], compile=compiled)
            sync()
            warmup = time.perf_counter() - began
            seconds = best_time(lambda: (model.generate(prompt, max_new_tokens=NEW, eos_token_id=[], compile=compiled),
                                    sync()))
            name = f"decode_b{batch}" + ("_compiled" if compiled else "_eager")
            results[name] = {"s": round(seconds, 4), "tok_s_per_seq": round(NEW / seconds, 1),
                             "tok_s_total": round(batch * NEW / seconds, 1), "warmup_s": round(warmup, 1)}
            print(f"torch {name}: {results[name]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("flax", "torch"), required=True)
    args = parser.parse_args()
    began = time.time()
    results = {"size": SIZE, "prefill_tokens": PREFILL, "prompt": PROMPT, "new_tokens": NEW}
    try:
        results.update(run_flax() if args.backend == "flax" else run_torch())
    except Exception as e:  # noqa: BLE001 - the JSON must record a failure, and the next stage still run
        results["error"] = repr(e)[:500]
        print(f"[fail] {args.backend}: {e!r}", flush=True)
    results["total_s"] = round(time.time() - began, 1)
    print("RESULTS_JSON", json.dumps(results), flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), f"twin_{args.backend}.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
