"""CPU tokens/s of the Flax train step (llama_flax.training, optax AdamW) beside transformers' torch training
step (loss.backward + torch.optim.AdamW) in one run, on the same random weights.

A ~20M-parameter config (hidden 256, 4 layers, 8 heads / 4 kv heads, vocab 32000), float32, batch 4 x
256 tokens, no padding. Passes alternate between the implementations; each figure is the best of
--passes steps after warm-up (Flax: after compiling), and the figure that matters is the ratio.
Both steps clip gradients to norm 1.0 and use the same AdamW settings; the losses of the first
step are checked equal.

Then packed against padded rows, Flax only, from one corpus of documents of varied length (log-normal,
median --seq / 4, 8 to 2 --seq tokens): padded rows hold one document each (cut to --seq), packed
rows hold several (grain's first-fit packing, segment ids and restarting positions, long documents
cut into row-sized pieces). Both run --packing-steps steps of the same shape in alternation; the
figure is useful tokens per second (tokens that are a loss target, over the step's wall time).

    python -m benchmarks.train [--batch 4] [--seq 256] [--passes 5] [--threads 2] [--packing-steps 8]
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
    parser.add_argument("--packing-steps", type=int, default=8)
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
        "packed_vs_padded": packed_vs_padded(trainer, config.vocab_size, args.batch, args.seq, args.packing_steps),
    }
    print(json.dumps(result, indent=1))


def corpus_documents(vocab_size: int, seq: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """Random-token documents of log-normal length (median seq / 4, clipped to [8, 2 seq]), each
    ending in EOS (id 2)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(seq / 4), 0.9, count).astype(int), 8, 2 * seq)
    return [np.append(rng.integers(3, vocab_size, n - 1), 2).astype(np.int32) for n in lengths]


def padded_rows(documents: list[np.ndarray], batch: int, seq: int):
    """One document per row, cut to seq and right-padded (attention_mask 0 on the padding)."""
    for start in range(0, len(documents) - batch + 1, batch):
        ids, mask = np.zeros((batch, seq), np.int32), np.zeros((batch, seq), np.int32)
        for row, document in enumerate(documents[start:start + batch]):
            document = document[:seq]
            ids[row, :len(document)], mask[row, :len(document)] = document, 1
        yield {"input_ids": ids, "attention_mask": mask}


def packed_rows(documents: list[np.ndarray], batch: int, seq: int):
    """grain's first-fit packing of the documents (cut into pieces of at most seq) into rows."""
    import grain

    pieces = [{"input_ids": d[i:i + seq]} for d in documents for i in range(0, len(d), seq)]
    dataset = grain.experimental.FirstFitPackIterDataset(
        grain.MapDataset.source(pieces).to_iter_dataset(), length_struct={"input_ids": seq},
        num_packing_bins=batch, seed=0)
    for rows in dataset.batch(batch, drop_remainder=True):
        yield {"input_ids": rows["input_ids"].astype(np.int32), "segment_ids": rows["input_ids_segment_ids"],
               "position_ids": rows["input_ids_positions"]}


def packed_vs_padded(trainer, vocab_size: int, batch: int, seq: int, steps: int) -> dict:
    """Useful (target) tokens per second of training on padded and on packed rows of one corpus."""
    documents = corpus_documents(vocab_size, seq, 4 * batch * steps)
    sources = {"padded": padded_rows(documents, batch, seq), "packed": packed_rows(documents, batch, seq)}
    state = trainer.init_state()
    totals = {name: {"tokens": 0, "seconds": 0.0} for name in sources}
    for name, rows in sources.items():   # compile each batch signature outside the timing
        state, _ = trainer.step(state, next(rows))
    for _ in range(steps):
        for name, rows in sources.items():
            batch_arrays = next(rows)
            start = time.perf_counter()
            state, metrics = trainer.step(state, batch_arrays)
            tokens = int(metrics["tokens"])   # waits for the step
            totals[name]["seconds"] += time.perf_counter() - start
            totals[name]["tokens"] += tokens
    result = {name: {"useful_tokens_per_s": round(t["tokens"] / t["seconds"]),
                     "useful_fraction": round(t["tokens"] / (steps * batch * seq), 3)} for name, t in totals.items()}
    result["packed_over_padded"] = round(result["packed"]["useful_tokens_per_s"] /
                                         result["padded"]["useful_tokens_per_s"], 2)
    result["documents"] = len(documents)
    result["median_document_tokens"] = int(np.median([len(d) for d in documents]))
    return result


if __name__ == "__main__":
    main()
