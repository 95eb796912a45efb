"""CPU decode tokens/s of int8 and int4 weight-only models beside the float model and llama.cpp, one run.

The "small" shape of benchmarks/decode.py (hidden 1024, 12 layers, 207M parameters) with random
float32 weights, saved once; from that folder both twins load float32, int8 (one scale per output
channel) and int4-g32, and the project's GGUF writer exports F32, Q8_0 and Q4_0 files that
llama.cpp (llama-cpp-python) decodes. Every runner decodes greedily from the same 32-token prompt
(prompt included in the time), never stopping early; best of PASSES passes taken round-robin
after a warm-up, so every runner meets the same spells of load. The torch twin runs eager and
compiled (generate(compile=True): inductor over frozen weights, the quantized layers calling the
kernel as an operator), each against its own float32 model. Each quantized figure is printed
as a ratio to the float32 model of the same twin, and to llama.cpp's file of the same bit width.

Kernels: both twins' quantized layers run with the default kernel "auto": llama_shared.native's C++
kernel for up to 32 input rows (decoding steps; the batch-1 prompt), x rounded to int16 per 32
columns for one row (llama.cpp rounds it to int8); the portable product for more (batch 8's prompt).
llama.cpp loads weights as stored (use_extra_bufts=False): its repacked AMX/AVX512 layouts crash on this VM.

    python -m benchmarks.quant [--size small|tiny] [--new-tokens 64] [--passes 5] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.decode import SIZES  # noqa: E402
from benchmarks.timing import interleaved_best_times  # noqa: E402
from llama_flax import quantization as flax_quant  # noqa: E402
from llama_flax.modeling import FlaxLlamaForCausalLM  # noqa: E402
from llama_shared import quantization as q  # noqa: E402
from llama_shared.checkpoints import save_tensors  # noqa: E402
from llama_shared.config import LlamaConfig  # noqa: E402
from llama_torch import quantization as torch_quant  # noqa: E402
from llama_torch.modeling import LlamaForCausalLM  # noqa: E402
from llama_twin.conversion import convert  # noqa: E402

PROMPT = 32
# (name, settings, llama.cpp file of the same bit width)
MODES = [("float32", None, "f32"), ("int8", q.QuantizationConfig(8), "q8_0"),
         ("int4-g32", q.QuantizationConfig(4, 32), "q4_0")]


def save_random_model(directory: str, size: str) -> LlamaConfig:
    """A random float32 model (std 0.02, as transformers initialises) in directory."""
    config = LlamaConfig(**SIZES[size], max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return config


def twin_runners(directory: str, prompt: np.ndarray, new: int) -> dict:
    """{label: run} for both twins in every mode, the torch twin eager and compiled."""
    runners = {}
    ids = torch.from_numpy(prompt)
    for name, settings, _ in MODES:
        model = LlamaForCausalLM.from_pretrained(directory)
        if settings is not None:
            torch_quant.quantize(model, settings)
        for twin, compile in (("torch", False), ("torch-compiled", True)):
            runners[f"{twin} {name}"] = (lambda m, c: lambda: m.generate(ids, max_new_tokens=new, do_sample=False,
                                                                         eos_token_id=[], compile=c))(model, compile)
    for name, settings, _ in MODES:
        model = FlaxLlamaForCausalLM.from_pretrained(directory, quantization=settings)
        runners[f"flax {name}"] = (lambda m: lambda: np.asarray(m.generate(prompt, max_new_tokens=new, do_sample=False,
                                                                           eos_token_id=[])))(model)
    return runners


def llama_cpp_runners(directory: str, files: str, prompt: np.ndarray, new: int, threads: int) -> dict:
    """{label: run} for llama.cpp on each exported GGUF file (batch 1 only)."""
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: llama.cpp is left out")
        return {}
    default = llama_cpp.llama_model_default_params

    def stored_layout():
        params = default()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama.llama_cpp.llama_model_default_params = stored_layout
    runners = {}
    for _, _, gguf_type in MODES:
        path = os.path.join(files, f"model-{gguf_type}.gguf")
        start = time.perf_counter()
        if not os.path.exists(path):
            convert(directory, path, "gguf", gguf_type=gguf_type, progress=False)
        print(f"exported {gguf_type} in {time.perf_counter() - start:.0f} s ({os.path.getsize(path) / 1e6:.0f} MB)",
              flush=True)
        model = llama_cpp.Llama(model_path=path, n_ctx=PROMPT + new + 8, n_threads=threads, n_threads_batch=threads,
                                verbose=False)

        def run(model=model):
            model.reset()
            tokens = []
            for token in model.generate(prompt[0].tolist(), top_k=1, temp=0.0, reset=True):
                tokens.append(token)
                if len(tokens) == new:
                    return tokens
        runners[f"llama.cpp {gguf_type.upper()}"] = run
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    results = {"size": args.size, "new_tokens": args.new_tokens, "runs": [],
               "versions": {"python": platform.python_version(), "torch": torch.__version__, "jax": jax.__version__}}
    print(f"size {args.size}: {SIZES[args.size]}; prompt {PROMPT}, {args.new_tokens} new tokens, best of "
          f"{args.passes}; torch {torch.__version__} ({args.threads} threads), jax {jax.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="quant-bench-") as scratch:
        directory, files = os.path.join(scratch, "model"), os.path.join(scratch, "gguf")
        os.makedirs(files)
        config = save_random_model(directory, args.size)
        for batch in (int(b) for b in args.batches.split(",")):
            prompt = rng.integers(3, config.vocab_size, (batch, PROMPT))
            runners = twin_runners(directory, prompt, args.new_tokens)
            if batch == 1:
                runners.update(llama_cpp_runners(directory, files, prompt, args.new_tokens, args.threads))
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                print(f"batch {batch} {name}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
            seconds = interleaved_best_times(runners, args.passes)
            tok_s = {name: batch * args.new_tokens / s for name, s in seconds.items()}
            for name, rate in tok_s.items():
                twin, mode = name.split(" ", 1)
                run = {"batch": batch, "impl": name, "tok_s": round(rate, 1)}
                if twin != "llama.cpp":
                    run["vs_float32"] = round(rate / tok_s[f"{twin} float32"], 2)
                    llama_type = dict((m, g.upper()) for m, _, g in MODES)[mode]
                    if f"llama.cpp {llama_type}" in tok_s:
                        run["vs_llama_cpp"] = round(rate / tok_s[f"llama.cpp {llama_type}"], 2)
                results["runs"].append(run)
                print(f"batch {batch} {name:20s} {rate:7.1f} tok/s  " +
                      "  ".join(f"{k} {v:.2f}x" for k, v in run.items() if k.startswith("vs_")), flush=True)
            del runners
    print(json.dumps(results))


if __name__ == "__main__":
    main()
