"""Loading and saving a 1B-parameter checkpoint on the CPU: the Flax twin beside transformers' torch
Llama and beside a plain read of the same bytes, in one run.

The checkpoint is benchmarks/convert.py's (Llama-3.2-1B shapes, random bfloat16 values, 2.47 GB).
Every step reads it from a warm page cache (one untimed read first), so the figures are the
loaders' own work on the host: reading, the [out, in] -> [in, out] kernel transposes, casts and the
hand-over to JAX, not the disk. Loading into float32 (transformers' and the twins' default) casts
every tensor; bfloat16 loads as stored (transformers maps a bfloat16 file instead of reading it, so
only float32 loads are set beside it). save_pretrained writes the float32 model into a new folder
each time (removed after). Passes run round robin; the best of each is kept.

    python -m benchmarks.load [--workdir DIR] [--passes 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.convert import write_random_checkpoint  # noqa: E402
from benchmarks.timing import interleaved_best_times  # noqa: E402
from llama_shared.checkpoints import Checkpoint  # noqa: E402
from llama_shared.config import LlamaConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="folder for the checkpoint (default: a temporary folder, removed after)")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from llama_flax import FlaxLlamaForCausalLM
    from llama_flax.parallel import from_pretrained_sharded, make_mesh

    torch.set_num_threads(2)
    workdir = args.workdir or tempfile.mkdtemp(prefix="load-bench-")
    folder = os.path.join(workdir, "hf")
    if not os.path.exists(os.path.join(folder, "config.json")):
        write_random_checkpoint(folder, LlamaConfig.from_preset("llama-3.2-1b"))
    checkpoint = Checkpoint(folder)
    size = sum(checkpoint.read(key).nbytes for key in checkpoint.keys())  # also warms the page cache
    model = FlaxLlamaForCausalLM.from_pretrained(folder)
    saved = os.path.join(workdir, "saved")

    def read_all() -> None:
        for key in checkpoint.keys():
            checkpoint.read(key)

    def flax(dtype: str) -> None:
        jax.block_until_ready(FlaxLlamaForCausalLM.from_pretrained(folder, dtype=dtype).params)

    def flax_sharded() -> None:
        jax.block_until_ready(from_pretrained_sharded(FlaxLlamaForCausalLM, folder, make_mesh()).params)

    def flax_save() -> None:
        shutil.rmtree(saved, ignore_errors=True)
        model.save_pretrained(saved)

    def transformers_load() -> None:
        transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)

    runners = {
        "read the safetensors": read_all,
        "transformers from_pretrained float32": transformers_load,
        "flax from_pretrained float32": lambda: flax("float32"),
        "flax from_pretrained bfloat16": lambda: flax("bfloat16"),
        "flax from_pretrained_sharded float32 (1 device)": flax_sharded,
        "flax save_pretrained float32": flax_save,
    }
    best = interleaved_best_times(runners, args.passes)
    shutil.rmtree(saved, ignore_errors=True)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} "
          f"({jnp.zeros(()).device.platform}), torch {torch.__version__}, transformers {transformers.__version__}; "
          f"checkpoint {size / 1e9:.2f} GB bfloat16, best of {args.passes}")
    reference = best["transformers from_pretrained float32"]
    print(f"{'step':<50} {'seconds':>8} {'GB/s read':>10} {'vs read':>8} {'vs transformers':>16}")
    for name, seconds in best.items():
        versus = f"{reference / seconds:.2f}x" if name.startswith("flax from_pretrained") and "float32" in name else ""
        print(f"{name:<50} {seconds:>8.2f} {size / seconds / 1e9:>10.2f} "
              f"{best['read the safetensors'] / seconds:>8.2f} {versus:>16}")
    if not args.workdir:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
