"""Compile time of the Flax twin's forward pass, generate and train step against depth, scanned
layers (scan_layers=True) beside unrolled ones, in one run.

A narrow random config (hidden 128, intermediate 256, 4 heads / 2 kv heads, vocab 256) at 8, 32 and
80 layers, float32, on the CPU. Each figure is XLA's lower + compile time of one program: the
forward pass on a 2 x 64 batch, generate's whole decode loop (a 16-token prompt, 16 new tokens;
generate's own compile_s), and the train step (AdamW, batch 2 x 64). Nothing is timed twice: each
(depth, layout) builds its model once and compiles each program once, after a 1-layer warm-up run
of both layouts (untimed) has paid the process's first-compile costs. The goal: scanned at 80 layers
within 1.5x of scanned at 8, and at least 5x below unrolled at 80.

    python -m benchmarks.compile [--layers 8,32,80] [--layouts scanned,unrolled]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def compile_times(layers: int, scanned: bool) -> dict[str, float]:
    """Seconds to compile the forward pass, generate and the train step of one model: wall time, and
    the process's CPU time (less sensitive to other jobs on a shared machine)."""
    import jax
    import jax.numpy as jnp

    from llama_flax import FlaxLlamaForCausalLM, LlamaConfig
    from llama_flax.training import TrainConfig, Trainer

    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=0, eos_token_id=2, bos_token_id=1)
    model = FlaxLlamaForCausalLM(config, scan_layers=scanned)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 256, (2, 64)), jnp.int32)

    times = {}

    def timed(name: str, run: callable) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        times[f"{name}_s"] = time.perf_counter() - wall
        times[f"{name}_cpu_s"] = time.process_time() - cpu

    forward = jax.jit(lambda params, ids: model.module.apply({"params": params}, ids).logits)
    timed("forward", lambda: forward.lower(model.params, ids).compile())
    # generate's own compile_s covers its compile alone; the CPU time also holds the few decode steps
    stats: dict = {}
    timed("generate", lambda: model.generate(ids[:, :16], max_new_tokens=16, do_sample=False, stats=stats))
    times["generate_s"] = stats["compile_s"]
    trainer = Trainer(model, TrainConfig(warmup_steps=0, total_steps=10))
    state = trainer.init_state()
    batch = {"input_ids": ids, "labels": ids}
    step = jax.jit(trainer.step_fn, donate_argnums=0)
    timed("train_step", lambda: step.lower(state, batch).compile())
    return {name: round(value, 2) for name, value in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="8,32,80")
    parser.add_argument("--layouts", default="scanned,unrolled")
    args = parser.parse_args()

    import jax

    depths = [int(n) for n in args.layers.split(",")]
    layouts = args.layouts.split(",")
    for layout in layouts:
        compile_times(1, layout == "scanned")
    results = {layout: {depth: compile_times(depth, layout == "scanned") for depth in depths} for layout in layouts}
    summary = {}
    if "scanned" in results and len(depths) > 1:
        low, high = min(depths), max(depths)
        for name in results["scanned"][high]:
            summary[f"scanned {name} {high} / {low} layers"] = round(
                results["scanned"][high][name] / results["scanned"][low][name], 2)
            if "unrolled" in results:
                summary[f"unrolled / scanned {name} at {high} layers"] = round(
                    results["unrolled"][high][name] / results["scanned"][high][name], 1)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "jax": jax.__version__,
                      "compile_seconds": results, "ratios": summary}, indent=1))


if __name__ == "__main__":
    main()
