"""LoRA and QLoRA training against full fine-tuning, Flax trainer, in one run.

1. CPU step time and tokens/s: full fine-tuning, LoRA r=8 on q_proj and v_proj, LoRA r=8 on every
   linear layer and QLoRA (int4, group 128, r=8 on q, v), beside PEFT's LoRA step in transformers
   torch (same weights, same targets) where peft is installed. The ~20M config of benchmarks/train.py
   (hidden 256, 4 layers, 8 / 4 heads, vocab 32000), float32, batch 4 x 256; passes alternate, best
   of --passes after warm-up. Ratio = full step time / this step time.
2. Memory at the Llama-3.2-1B shape, from jax's compiled memory analysis (no weights are made): the
   optimizer state (the output of the compiled optimizer.init on the trainable params, float32
   master copy) and the train step's arguments and temporaries (batch 4 x 2048, bfloat16 compute and
   base, remat full) for full fine-tuning, LoRA r=8 on q, v and QLoRA int4 r=8 on q, v; the frozen
   base's bytes on the device as the step takes them.

    python -m benchmarks.lora [--passes 5] [--threads 2] [--skip-memory] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np

RANK = 8
QV = ("q_proj", "v_proj")


def cpu_steps(passes: int, threads: int) -> dict:
    import jax
    import torch
    import transformers

    from benchmarks.timing import interleaved_best_times
    from llama_flax import FlaxLlamaForCausalLM
    from llama_flax.training import TrainConfig, Trainer
    from llama_shared.lora import LoraConfig

    torch.set_num_threads(threads)
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048)
    torch.manual_seed(0)
    folder = tempfile.mkdtemp()
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    batch, seq = 4, 256
    ids = np.random.default_rng(0).integers(3, config.vocab_size, size=(batch, seq))
    train_config = TrainConfig(learning_rate=1e-4, warmup_steps=0, total_steps=1000, weight_decay=0.0, b2=0.999)
    runs = {"full": (None, None), "lora_qv": (QV, None), "lora_all_linear": ("all-linear", None),
            "qlora_int4_qv": (QV, "int4")}
    steps, compile_s, trainable = {}, {}, {}
    for name, (targets, quantization) in runs.items():
        model = FlaxLlamaForCausalLM.from_pretrained(folder, quantization=quantization)
        if targets is not None:
            model.add_adapter(LoraConfig(r=RANK, lora_alpha=16, target_modules=targets))
        trainer = Trainer(model, train_config)
        holder = {"state": trainer.init_state()}
        trainable[name] = sum(leaf.size for leaf in jax.tree.leaves(holder["state"].params))

        def step(trainer=trainer, holder=holder) -> float:
            holder["state"], metrics = trainer.step(holder["state"], {"input_ids": ids})
            return float(metrics["loss"])   # waits for the step

        began = time.perf_counter()
        step()
        compile_s[name] = round(time.perf_counter() - began, 2)
        steps[name] = step
    try:
        steps["peft_torch_lora_qv"] = peft_step(folder, ids)
    except ImportError:
        pass
    best = interleaved_best_times(steps, passes)
    tokens = batch * seq
    return {"batch": batch, "seq": seq, "rank": RANK, "trainable_params": trainable, "flax_compile_s": compile_s,
            "step_s": {n: round(s, 4) for n, s in best.items()},
            "tokens_per_s": {n: round(tokens / s) for n, s in best.items()},
            "speed_over_full": {n: round(best["full"] / s, 2) for n, s in best.items()},
            "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__}}


def peft_step(folder: str, ids: np.ndarray):
    """PEFT's LoRA r=8 on q, v in transformers torch: loss.backward() and AdamW on the adapter."""
    import peft
    import torch
    import transformers

    model = peft.get_peft_model(transformers.LlamaForCausalLM.from_pretrained(folder),
                                peft.LoraConfig(r=RANK, lora_alpha=16, target_modules=list(QV))).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids_torch = torch.tensor(ids)

    def step() -> float:
        loss = model(input_ids=ids_torch, labels=ids_torch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()
    return step


def memory_at_1b() -> dict:
    """Compiled memory analysis of the optimizer state and the train step at the Llama-3.2-1B shape."""
    import jax
    import jax.numpy as jnp

    from llama_flax import FlaxLlamaForCausalLM
    from llama_flax.training import TrainConfig, Trainer, init_train_state
    from llama_shared import lora
    from llama_shared import quantization as q
    from llama_shared.config import LlamaConfig
    from llama_shared.naming import unflatten_tree

    config = LlamaConfig.from_preset("llama-3.2-1b")
    batch = {name: jax.ShapeDtypeStruct((4, 2048), jnp.int32) for name in ("input_ids", "labels")}
    train_config = TrainConfig(compute_dtype="bfloat16", remat_policy="full")
    adapter = lora.LoraConfig(r=RANK, lora_alpha=16, target_modules=QV)
    cases = {"full": (config, None, True), "lora_qv": (config, adapter, True),
             "qlora_int4_qv": (q.with_quantization(config, q.QuantizationConfig.create("int4")), adapter, False)}
    result = {}
    for name, (model_config, case_adapter, scan_layers) in cases.items():
        model = FlaxLlamaForCausalLM.without_params(model_config, jnp.bfloat16, scan_layers=scan_layers)
        model.module = model.module.clone(config=lora.with_adapter(model_config, case_adapter))
        shapes = unflatten_tree(model.param_shapes())
        trainer = Trainer(model, train_config)
        trainable, frozen = trainer.trainable(shapes)
        trainable = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32), trainable)   # the master copy
        optimizer_state = jax.jit(trainer.optimizer.init).lower(trainable).compile().memory_analysis()
        state = jax.eval_shape(lambda p: init_train_state(p, trainer.optimizer), trainable)
        began = time.perf_counter()
        step = jax.jit(trainer.step_fn, donate_argnums=0).lower(state, batch, frozen).compile().memory_analysis()
        result[name] = {
            "trainable_params": sum(s.size for s in jax.tree.leaves(trainable)),
            "optimizer_state_bytes": optimizer_state.output_size_in_bytes,
            "frozen_base_bytes": sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(frozen)),
            "step_argument_bytes": step.argument_size_in_bytes, "step_temp_bytes": step.temp_size_in_bytes,
            "step_compile_s": round(time.perf_counter() - began, 1)}
    full = result["full"]
    for name, figures in result.items():
        figures["optimizer_state_smaller_than_full"] = round(full["optimizer_state_bytes"] /
                                                             figures["optimizer_state_bytes"], 1)
    result["bf16_base_bytes"] = sum(s.size * 2 for s in jax.tree.leaves(
        unflatten_tree(FlaxLlamaForCausalLM.without_params(config, jnp.bfloat16).param_shapes())))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads}
    if not args.skip_cpu:
        result["cpu_step"] = cpu_steps(args.passes, args.threads)
    if not args.skip_memory:
        result["memory_llama_3_2_1b"] = memory_at_1b()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
