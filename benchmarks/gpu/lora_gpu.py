"""GPU LoRA step at the Llama-3.2-1B shape (issue 20): tokens/s and peak memory of LoRA r=8 on q, v and
of QLoRA (int4 base, r=8 on q, v) beside the full fine-tuning step, same process, same batch.

Random weights (vocab 128256, hidden 2048, 16 layers, 32 / 8 heads, tied embeddings), batch 4 x 2048
tokens, no padding, bfloat16 compute, the anchor's AdamW settings of train_gpu.py. Stages, each
guarded and inside a global deadline:
  full          every weight trains, bf16 params and moments (train_gpu.py's "bf16" stage)
  lora_qv       bf16 base frozen, adapter float32
  qlora_int4    int4 base (group 128) frozen, adapter float32 (the layers run unrolled)

    python3 -m benchmarks.gpu.lora_gpu            # SIZE=tiny for a CPU dry run; ONLY=full,... to pick stages
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llama_flax import quantize  # noqa: E402
from llama_flax.modeling import FlaxLlamaForCausalLM  # noqa: E402
from llama_flax.training import TrainConfig, Trainer  # noqa: E402
from llama_shared.config import LlamaConfig  # noqa: E402
from llama_shared.lora import LoraConfig  # noqa: E402

T0 = time.time()
DEADLINE = float(os.environ.get("DEADLINE_S", "400"))
OUT = os.environ.get("OUT", "/tmp")
SIZE = os.environ.get("SIZE", "1b")
if SIZE == "1b":
    CONFIG = LlamaConfig.from_preset("llama-3.2-1b")
    BATCH, SEQ, WARM, REPS = 4, 2048, 2, 5
else:
    CONFIG = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    BATCH, SEQ, WARM, REPS = 2, 64, 1, 2
ADAPTER = LoraConfig(r=8, lora_alpha=16, target_modules=("q_proj", "v_proj"))
STAGES = {"full": dict(adapter=None, quantization=None, scan_layers=True),
          "lora_qv": dict(adapter=ADAPTER, quantization=None, scan_layers=True),
          "qlora_int4": dict(adapter=ADAPTER, quantization="int4", scan_layers=False)}
ONLY = [s for s in os.environ.get("ONLY", ",".join(STAGES)).split(",") if s]


def run_stage(name: str, settings: dict) -> dict:
    model = FlaxLlamaForCausalLM(CONFIG, dtype=jnp.bfloat16, seed=0, scan_layers=settings["scan_layers"])
    if settings["quantization"]:
        quantize(model, settings["quantization"])
    if settings["adapter"] is not None:
        model.add_adapter(settings["adapter"])
    master = "float32" if settings["adapter"] is not None else "bfloat16"
    config = TrainConfig(learning_rate=1e-5, warmup_steps=0, total_steps=1000, weight_decay=0.01, b1=0.9, b2=0.999,
                         eps=1e-8, max_grad_norm=None, compute_dtype="bfloat16", master_dtype=master)
    trainer = Trainer(model, config)
    state = trainer.init_state()
    trainable = sum(p.size for p in jax.tree.leaves(state.params))
    frozen_bytes = sum(p.nbytes for p in jax.tree.leaves(trainer.frozen))
    model.params = None  # the state and trainer.frozen hold the only copies
    ids = np.random.default_rng(0).integers(3, CONFIG.vocab_size, (BATCH, SEQ)).astype(np.int32)
    batch = {"input_ids": ids, "labels": ids}
    began = time.perf_counter()
    state, metrics = trainer.step(state, batch)
    first_loss = float(metrics["loss"])
    compile_s = time.perf_counter() - began
    for _ in range(WARM - 1):
        state, metrics = trainer.step(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(REPS):
        began = time.perf_counter()
        state, metrics = trainer.step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - began)
    seconds = float(np.median(times))
    memory = jax.devices()[0].memory_stats() or {}
    del state
    return {"trainable_params": trainable, "frozen_bytes": frozen_bytes, "first_loss": round(first_loss, 4),
            "compile_s": round(compile_s, 1), "s_per_step": round(seconds, 4),
            "tok_per_s": round(BATCH * SEQ / seconds),
            "peak_mem_GiB": round(memory.get("peak_bytes_in_use", 0) / 2**30, 1)}


def main() -> None:
    print("jax", jax.__version__, jax.devices(), f"SIZE={SIZE} batch {BATCH} x {SEQ}", flush=True)
    results = {}
    for name in ONLY:
        left = DEADLINE - (time.time() - T0)
        if left < (90 if SIZE == "1b" else 5):
            print(f"[skip] {name}: {left:.0f}s left", flush=True)
            continue
        began = time.time()
        try:
            results[name] = run_stage(name, STAGES[name])
            print(f"[ok] {name} ({time.time() - began:.1f}s): {results[name]}", flush=True)
        except Exception as e:  # keep going: an out-of-memory stage must not hide the next
            results[name] = {"error": repr(e)[:300]}
            print(f"[fail] {name}: {e!r}"[:400], flush=True)
            traceback.print_exc(limit=3)
    if "full" in results and "tok_per_s" in results["full"]:
        for figures in results.values():
            if "tok_per_s" in figures:
                figures["speed_over_full"] = round(figures["tok_per_s"] / results["full"]["tok_per_s"], 2)
    print("TOTAL_S", round(time.time() - T0, 1))
    print("RESULTS_JSON", json.dumps(results))
    with open(os.path.join(OUT, "lora_gpu.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
