"""Peak resident memory per process while the torch twin loads a checkpoint sharded over 4 gloo
processes on the CPU (llama_torch.parallel.from_pretrained_sharded), beside one process loading the
whole model with from_pretrained, in one run.

The checkpoint is benchmarks/convert.py's random one (default: Llama-3.2-1B shapes, bfloat16,
2.47 GB), loaded as bfloat16, so the model's bytes equal the file's. Each process, once torch, the
process group and the mesh are up, resets its peak (writing 5 to /proc/self/clear_refs, Linux) and
reads VmRSS; after loading, VmHWM minus that start is the loader's peak, mapped checkpoint pages
included. Figures are that peak over the model's bytes: a rank's shard alone is 0.25.

    python -m benchmarks.parallel_load [--workdir DIR] [--preset llama-3.2-1b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MESHES = ((1, 1, 4), (1, 4, 1), (1, 2, 2))  # (data, fsdp, tensor)


def memory_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> int:
    """Reset VmHWM to the current resident size; return that size in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return memory_kb("VmRSS") * 1024


def measure_rank(folder: str, shape: tuple[int, int, int], out_file: str) -> None:
    """One rank: load sharded, then gather every rank's peak and shard sizes to rank 0's out_file."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from llama_torch import LlamaForCausalLM, parallel

    mesh = parallel.make_mesh(*shape)
    start = reset_peak()
    model = parallel.from_pretrained_sharded(LlamaForCausalLM, folder, mesh, dtype="bfloat16")
    peak = memory_kb("VmHWM") * 1024 - start
    held = sum((p.to_local() if isinstance(p, DTensor) else p).nbytes for p in model.parameters())
    rows: list = [None] * dist.get_world_size()
    dist.all_gather_object(rows, {"peak": peak, "held": held})
    if dist.get_rank() == 0:
        with open(out_file, "w") as f:
            json.dump(rows, f)


def one_process_peak(folder: str) -> tuple[int, int]:
    """(peak bytes above the start, model bytes) of plain from_pretrained in this process."""
    from llama_torch import LlamaForCausalLM

    start = reset_peak()
    model = LlamaForCausalLM.from_pretrained(folder, dtype="bfloat16")
    peak = memory_kb("VmHWM") * 1024 - start
    return peak, sum(p.nbytes for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="folder for the checkpoint (default: a temporary folder, removed after)")
    parser.add_argument("--preset", default="llama-3.2-1b")
    args = parser.parse_args()

    import torch

    from benchmarks.convert import write_random_checkpoint
    from llama_shared.config import LlamaConfig
    from llama_torch import parallel

    workdir = args.workdir or tempfile.mkdtemp(prefix="parallel-load-bench-")
    folder = os.path.join(workdir, "hf")
    try:
        if not os.path.exists(os.path.join(folder, "config.json")):
            write_random_checkpoint(folder, LlamaConfig.from_preset(args.preset))
        reference_peak, model_bytes = one_process_peak(folder)
        print(f"{args.preset}, bfloat16, {model_bytes / 1e9:.2f} GB; Python {platform.python_version()}, "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs")
        print(f"{'load':<34}{'peak / model bytes (max over ranks)':>38}{'shard held / model bytes':>28}")
        print(f"{'from_pretrained, 1 process':<34}{reference_peak / model_bytes:>38.3f}{1:>28.3f}")
        for shape in MESHES:
            out_file = os.path.join(workdir, "ranks.json")
            parallel.spawn(measure_rank, 4, folder, shape, out_file, timeout_s=1800, backend="gloo")
            with open(out_file) as f:
                rows = json.load(f)
            peak = max(row["peak"] for row in rows) / model_bytes
            held = max(row["held"] for row in rows) / model_bytes
            print(f"{f'from_pretrained_sharded {shape}':<34}{peak:>38.3f}{held:>28.3f}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
