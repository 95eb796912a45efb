"""GPU train step at the Llama-3.2-1B shape (issue 6): tokens/s and MFU of llama_flax.training beside the
anchor of ../shared/bench/gpu_anchor_hf_torch.py (transformers torch, fused AdamW: 36% MFU on an H100
at batch 4; transformers Flax: 27% at batch 2, out of memory at batch 4). Goal: >= 50% MFU at batch 4.

Random weights (vocab 128256, hidden 2048, 16 layers, 32 / 8 heads, tied embeddings), batch 4 x 2048
tokens, no padding (so attention takes cuDNN's fused causal kernel), AdamW with the anchor's
settings (lr 1e-5, weight decay 0.01, no clipping). FLOPs per step as the anchor counts them:
6 N per token plus causal attention 6 L d T per token; MFU against 989 TFLOP/s (H100 SXM bf16 dense).
Stages, each guarded and inside a global deadline:
  bf16          bf16 params and compute (the anchor's setting), no remat
  bf16_master32 bf16 compute, float32 master params and moments
  bf16_dots     bf16 params, remat dots_saveable (what to use if the first runs out of memory)

    python3 -m benchmarks.gpu.train_gpu            # SIZE=tiny for a CPU dry run; ONLY=bf16,... to pick stages
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Callable

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from llama_flax.loading import resolve_dtype  # noqa: E402
from llama_flax.modeling import FlaxLlamaForCausalLM  # noqa: E402
from llama_flax.training import TrainConfig, Trainer  # noqa: E402
from llama_shared.config import LlamaConfig  # noqa: E402

T0 = time.time()
DEADLINE = float(os.environ.get("DEADLINE_S", "400"))
OUT = os.environ.get("OUT", "/tmp")
SIZE = os.environ.get("SIZE", "1b")
PEAK_FLOPS = 989e12
if SIZE == "1b":
    CONFIG = LlamaConfig.from_preset("llama-3.2-1b")
    BATCH, SEQ, WARM, REPS = 4, 2048, 2, 5
else:
    CONFIG = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    BATCH, SEQ, WARM, REPS = 2, 64, 1, 2
STAGES = {
    "bf16": dict(compute_dtype="bfloat16", master_dtype="bfloat16", remat_policy="none"),
    "bf16_master32": dict(compute_dtype="bfloat16", master_dtype="float32", remat_policy="none"),
    "bf16_dots": dict(compute_dtype="bfloat16", master_dtype="bfloat16", remat_policy="dots_saveable"),
}


def step_flops(parameters: int) -> float:
    c = CONFIG
    return 6 * parameters * BATCH * SEQ + 12 * c.num_hidden_layers * BATCH * SEQ * SEQ * c.hidden_size / 2


def run_stage(name: str, settings: dict) -> dict:
    model = FlaxLlamaForCausalLM(CONFIG, dtype=resolve_dtype(settings["master_dtype"], CONFIG), seed=0)
    parameters = sum(p.size for p in jax.tree.leaves(model.params))
    config = TrainConfig(learning_rate=1e-5, warmup_steps=0, total_steps=1000, weight_decay=0.01, b1=0.9, b2=0.999,
                         eps=1e-8, max_grad_norm=None, **settings)
    trainer = Trainer(model, config)
    state = trainer.init_state()
    model.params = None  # the state holds the only copy
    figures = timed_steps(trainer, state)
    flops = step_flops(parameters)
    return {"params": parameters, **figures, "TFLOPs": round(flops / figures["s_per_step"] / 1e12, 1),
            "MFU_vs_989": round(flops / figures["s_per_step"] / PEAK_FLOPS, 3)}


def timed_steps(trainer: Trainer, state) -> dict:
    """Compile (the first step), warm up, then the median of REPS steps on one random batch; the
    state is consumed (donated) and freed."""
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
    return {"first_loss": round(first_loss, 4), "compile_s": round(compile_s, 1), "s_per_step": round(seconds, 4),
            "tok_per_s": round(BATCH * SEQ / seconds),
            "peak_mem_GiB": round(memory.get("peak_bytes_in_use", 0) / 2**30, 1)}


def run_stages(stages: dict, run: Callable[[str, dict], dict], json_name: str,
               summarize: Callable[[dict], None] = lambda results: None) -> None:
    """Run the ONLY stages in turn within DEADLINE (a failed stage is recorded, the next still runs);
    print the results and write them to OUT/json_name."""
    print("jax", jax.__version__, jax.devices(), f"SIZE={SIZE} batch {BATCH} x {SEQ}", flush=True)
    results = {}
    for name in os.environ.get("ONLY", ",".join(stages)).split(","):
        if not name:
            continue
        left = DEADLINE - (time.time() - T0)
        if left < (90 if SIZE == "1b" else 5):
            print(f"[skip] {name}: {left:.0f}s left", flush=True)
            continue
        began = time.time()
        try:
            results[name] = run(name, stages[name])
            print(f"[ok] {name} ({time.time() - began:.1f}s): {results[name]}", flush=True)
        except Exception as e:  # keep going: an out-of-memory stage must not hide the next
            results[name] = {"error": repr(e)[:300]}
            print(f"[fail] {name}: {e!r}"[:400], flush=True)
            traceback.print_exc(limit=3)
    summarize(results)
    print("TOTAL_S", round(time.time() - T0, 1))
    print("RESULTS_JSON", json.dumps(results))
    with open(os.path.join(OUT, json_name), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    run_stages(STAGES, run_stage, "train_gpu.json")
