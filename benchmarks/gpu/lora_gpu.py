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

import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.gpu.train_gpu import CONFIG, run_stages, timed_steps  # noqa: E402
from llama_flax import quantize  # noqa: E402
from llama_flax.modeling import FlaxLlamaForCausalLM  # noqa: E402
from llama_flax.training import TrainConfig, Trainer  # noqa: E402
from llama_shared.lora import LoraConfig  # noqa: E402

ADAPTER = LoraConfig(r=8, lora_alpha=16, target_modules=("q_proj", "v_proj"))
STAGES = {"full": dict(adapter=None, quantization=None, scan_layers=True),
          "lora_qv": dict(adapter=ADAPTER, quantization=None, scan_layers=True),
          "qlora_int4": dict(adapter=ADAPTER, quantization="int4", scan_layers=False)}


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
    return {"trainable_params": trainable, "frozen_bytes": frozen_bytes, **timed_steps(trainer, state)}


def speed_over_full(results: dict) -> None:
    """Each stage's tokens/s as a ratio to the full fine-tuning step's."""
    if "tok_per_s" in results.get("full", {}):
        for figures in results.values():
            if "tok_per_s" in figures:
                figures["speed_over_full"] = round(figures["tok_per_s"] / results["full"]["tok_per_s"], 2)


if __name__ == "__main__":
    run_stages(STAGES, run_stage, "lora_gpu.json", speed_over_full)
