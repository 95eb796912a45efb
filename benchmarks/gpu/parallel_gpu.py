"""The cost of llama_torch.parallel's tensor-parallel path on one GPU (TP=1) against the plain torch
twin, in one process: Llama-2-7B shape, bf16, random weights; JSON under $OUT.

One GPU cannot show multi-GPU figures; what it shows is the overhead the distributed path adds:
  plain            model.generate / forward of the plain twin (the reference)
  parallel.generate  the same model through parallel.generate in a one-process NCCL job (what
                   from_pretrained_sharded gives on a mesh of one: a mesh axis of size 1 adds nothing)
  DTensor TP=1     the model split by llama_torch.sharding over a one-GPU tensor mesh: every weight a
                   DTensor, every projection through ColwiseParallel / RowwiseParallel (eager, and
                   with compile=True)
Decode batch 1 (32-token prompt, 128 new tokens) and a 2048-token prefill; each figure also as a
ratio to plain (goal: DTensor TP=1 within 3%). SIZE=tiny is a CPU dry run (gloo).

    python -m benchmarks.gpu.parallel_gpu
"""

from __future__ import annotations

import json
import os
import socket
import time

from benchmarks.gpu.decode_gpu import NEW, PREFILL, PROMPT, SIZE, random_torch_model
from benchmarks.timing import best_time

DEADLINE = time.time() + float(os.environ.get("DEADLINE_S", "1e9"))
OUT = os.environ.get("OUT", "/tmp")


def main() -> None:
    import torch

    from llama_torch import parallel
    from llama_torch.sharding import apply_tensor_parallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    parallel.initialize_distributed()
    mesh = parallel.make_mesh()
    model, device, sync = random_torch_model()
    results = {"size": SIZE, "torch": torch.__version__, "prompt": PROMPT, "new_tokens": NEW, "prefill_tokens": PREFILL,
               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    prompt = torch.randint(3, 32000, (1, PROMPT))
    ids = torch.randint(3, 32000, (1, PREFILL), device=device)

    def decode(generate, name: str, compiled: bool) -> None:
        if time.time() > DEADLINE - 45 or (compiled and device != "cuda"):
            return
        run = lambda: (generate(prompt, max_new_tokens=NEW, eos_token_id=[], compile=compiled, seed=0), sync())  # noqa: E731
        began = time.perf_counter()
        try:
            run()
        except Exception as e:  # noqa: BLE001 - record why (compiling DTensors may fail) and go on
            record(results, name, {"error": repr(e)[:500]})
            return
        warmup = time.perf_counter() - began
        seconds = best_time(run)
        record(results, name, {"s": round(seconds, 4), "tok_s": round(NEW / seconds, 1), "warmup_s": round(warmup, 1)})

    def prefill(name: str) -> None:
        with torch.inference_mode():
            model(ids, logits_to_keep=1)
            sync()
            seconds = best_time(lambda: (model(ids, logits_to_keep=1), sync()))
        record(results, name, {"s": round(seconds, 4), "tok_s": round(PREFILL / seconds)})

    for compiled in (False, True):
        mode = "compiled" if compiled else "eager"
        decode(model.generate, f"plain decode_b1_{mode}", compiled)
        decode(lambda *a, **k: parallel.generate(model, *a, **k), f"parallel.generate decode_b1_{mode}", compiled)
    prefill("plain prefill")
    apply_tensor_parallel(model, mesh["tensor"])
    for compiled in (False, True):
        decode(model.generate, f"DTensor TP=1 decode_b1_{'compiled' if compiled else 'eager'}", compiled)
    prefill("DTensor TP=1 prefill")
    for name, entry in list(results.items()):
        reference = results.get("plain " + name.split(" ")[-1])
        if name.startswith(("parallel.generate", "DTensor")) and reference and "s" in entry and "s" in reference:
            entry["time_vs_plain"] = round(entry["s"] / reference["s"], 3)
    record(results, "done", True)


def record(results: dict, name: str, entry: object) -> None:
    """Print one stage and rewrite the JSON at once, so a run stopped by its deadline keeps what it measured."""
    results[name] = entry
    print(f"{name}: {entry}", flush=True)
    with open(os.path.join(OUT, "parallel_tp1.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
