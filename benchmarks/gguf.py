"""GGUF to Hugging Face conversion beside transformers' GGUF loading of the same file: time and peak RSS.

A random Llama checkpoint (Llama-3.2-1B's layer shapes at --layers layers, bfloat16, untied) is
written as safetensors, exported once to GGUF (--type, default q8_0) by `convert --to gguf`, and
then, in fresh processes and round robin over --passes passes:
- ours: `convert(model.gguf, out, "hf")` (dequantized float32 safetensors, streamed), and
- transformers: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` (dequantized float32
  model in memory), the reference of the same run.
Each child reports its wall time after its imports and its peak RSS (VmHWM) above the RSS its
imports left. Printed: best times, peak RSS, and the ratios ours/transformers; and our peak RSS over
the largest dequantized tensor (the bar: about one tensor, not the model).

python -m benchmarks.gguf [--layers N] [--type q8_0] [--passes N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llama_shared.checkpoints import write_checkpoint  # noqa: E402
from llama_shared.config import LlamaConfig  # noqa: E402
from llama_shared.naming import causal_lm_shapes  # noqa: E402

PEAK_RSS = """
def peak_rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
"""
OURS = PEAK_RSS + """
import json, sys, time
import torch, orbax.checkpoint  # imported before the clock starts, as transformers' torch is
from llama_twin.conversion import convert
base = peak_rss()
start = time.perf_counter()
convert(sys.argv[1], sys.argv[2], "hf", progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak_rss() - base}))
"""
TRANSFORMERS = PEAK_RSS + """
import json, os, sys, time
import torch, transformers
from transformers import AutoModelForCausalLM
transformers.logging.set_verbosity_error()
base = peak_rss()
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(sys.argv[1]), gguf_file=os.path.basename(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak_rss() - base}))
"""


def write_random_checkpoint(folder: str, layers: int) -> LlamaConfig:
    config = LlamaConfig.from_preset("llama-3.2-1b", num_hidden_layers=layers, tie_word_embeddings=False,
                                     torch_dtype="bfloat16")
    rng = np.random.default_rng(0)
    specs = {key: (shape, np.dtype(ml_dtypes.bfloat16)) for key, shape in causal_lm_shapes(config).items()}
    tensors = ((key, (rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16))
               for key, (shape, _) in specs.items())
    write_checkpoint(folder, specs, tensors, 2 * 2**30)
    config.save_pretrained(folder)
    return config


def run_child(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--type", default="q8_0")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-gguf-", dir=args.workdir)
    try:
        from llama_twin.conversion import convert

        config = write_random_checkpoint(os.path.join(work, "hf"), args.layers)
        start = time.perf_counter()
        gguf_path = os.path.join(work, "gguf", "model.gguf")
        convert(os.path.join(work, "hf"), gguf_path, "gguf", gguf_type=args.type, progress=False)
        export = time.perf_counter() - start
        largest = max(int(np.prod(s)) for s in causal_lm_shapes(config).values()) * 4
        print(f"model: {config.num_parameters() / 1e9:.2f}B parameters ({args.layers} layers of Llama-3.2-1B), "
              f"GGUF {args.type} {os.path.getsize(gguf_path) / 1e9:.2f} GB written in {export:.1f} s; "
              f"largest tensor dequantized {largest / 1e6:.0f} MB")
        results: dict[str, list[dict]] = {"ours": [], "transformers": []}
        for _ in range(args.passes):
            out = os.path.join(work, "out")
            results["ours"].append(run_child(OURS, gguf_path, out))
            shutil.rmtree(out)
            results["transformers"].append(run_child(TRANSFORMERS, gguf_path))
        best = {name: min(r["seconds"] for r in runs) for name, runs in results.items()}
        rss = {name: max(r["peak_rss"] for r in runs) for name, runs in results.items()}
        for name in results:
            print(f"{name:13s} best {best[name]:7.2f} s   peak RSS above imports {rss[name] / 1e9:6.2f} GB")
        print(f"ours / transformers: time {best['ours'] / best['transformers']:.2f}x, "
              f"peak RSS {rss['ours'] / rss['transformers']:.2f}x; our peak RSS = "
              f"{rss['ours'] / largest:.1f} x the largest dequantized tensor")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
