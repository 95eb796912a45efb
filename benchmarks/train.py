"""CPU tokens/s of the Flax train step (llama_flax.training, optax AdamW) beside transformers' torch training
step (loss.backward + torch.optim.AdamW) in one run, on the same random weights.

A ~20M-parameter config (hidden 256, 4 layers, 8 heads / 4 kv heads, vocab 32000), float32, batch 4 x
256 tokens, no padding. Passes alternate between the implementations; each figure is the best of
--passes steps after warm-up (Flax: after compiling), and the figure that matters is the ratio.
Both steps clip gradients to norm 1.0 and use the same AdamW settings; the losses of the first
step are checked equal.

    python -m benchmarks.train [--batch 4] [--seq 256] [--passes 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import jax
    import torch
    import transformers

    from llama_flax import FlaxLlamaForCausalLM
    from llama_flax.training import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).train()
    folder = tempfile.mkdtemp()
    reference.save_pretrained(folder)
    flax_model = FlaxLlamaForCausalLM.from_pretrained(folder)
    parameters = sum(p.numel() for p in reference.parameters())

    train_config = TrainConfig(learning_rate=1e-4, warmup_steps=0, total_steps=1000, weight_decay=0.0,
                               b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ids = np.random.default_rng(0).integers(3, config.vocab_size, size=(args.batch, args.seq))
    ids_torch = torch.tensor(ids)

    def torch_step() -> float:
        loss = reference(input_ids=ids_torch, labels=ids_torch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    trainer = Trainer(flax_model, train_config)
    state = trainer.init_state()

    def flax_step() -> float:
        nonlocal state
        state, metrics = trainer.step(state, {"input_ids": ids})
        return float(metrics["loss"])  # waits for the step

    first_torch = torch_step()
    start = time.perf_counter()
    first_flax = flax_step()
    compile_s = time.perf_counter() - start
    assert abs(first_torch - first_flax) < 1e-4, (first_torch, first_flax)

    times = {"flax": [], "torch": []}
    for _ in range(args.passes):
        for name, step in (("flax", flax_step), ("torch", torch_step)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    tokens = args.batch * args.seq
    best = {name: min(t) for name, t in times.items()}
    result = {
        "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "parameters": parameters, "batch": args.batch, "seq": args.seq, "first_step_loss": [first_flax, first_torch],
        "flax_compile_s": round(compile_s, 2),
        "flax_step_s": round(best["flax"], 4), "torch_step_s": round(best["torch"], 4),
        "flax_tokens_per_s": round(tokens / best["flax"]), "torch_tokens_per_s": round(tokens / best["torch"]),
        "flax_over_torch": round(best["torch"] / best["flax"], 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
