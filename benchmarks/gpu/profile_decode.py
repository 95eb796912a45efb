"""Where a batch-1 decode step's GPU time goes, Llama-2-7B shape, bf16: per-kernel tables of one
generate() call, beside transformers' Flax generate on the same weights, in one process.

Flax: the twin's generate and transformers 4.57's FlaxLlamaForCausalLM.generate (same parameter
tree, so the very same arrays) are timed round-robin, then traced with jax.profiler; the GPU plane's
kernels are summed by name. Both optimized HLO modules are written under $OUT. Torch: the twin's
compiled decode, traced with torch.profiler; trials named by --trial (other ways to compile the
torch decode step) run beside the twin as it is.
SIZE=tiny dry-runs on the CPU (no kernel table there).

    python -m benchmarks.gpu.profile_decode --backend flax|torch [--trial NAME ...]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.gpu.decode_gpu import NEW, PROMPT, SIZE, config, random_torch_model
from benchmarks.timing import interleaved_best_times

OUT = os.environ.get("OUT", "/tmp")
DEADLINE = time.time() + float(os.environ.get("DEADLINE_S", "1e9"))
TORCH_TRIALS = ("efficient_attention", "max_autotune")
RESULTS: dict = {"size": SIZE, "prompt": PROMPT, "new_tokens": NEW}


def record(name: str, entry: object) -> None:
    RESULTS[name] = entry
    print(f"{name}: {entry}", flush=True)
    with open(os.path.join(OUT, f"profile_{RESULTS['tag']}.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


def kernel_table(totals: dict[str, float], counts: dict[str, int], steps: int, label: str) -> dict:
    """Print the top kernels of one traced generate; returns per-token sums."""
    total_us = sum(totals.values()) / 1e3
    print(f"--- {label}: {sum(counts.values()) / steps:.1f} kernels and {total_us / steps:.1f} us of kernel time "
          f"per token", flush=True)
    top = []
    for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:14]:
        print(f"  {ns / 1e3 / steps:8.1f} us/tok  {counts[name] / steps:6.1f}/tok  {name[:110]}", flush=True)
        top.append([name[:110], round(ns / 1e3 / steps, 1), round(counts[name] / steps, 1)])
    return {"kernels_per_token": round(sum(counts.values()) / steps, 1),
            "kernel_us_per_token": round(total_us / steps, 1), "top_us_per_token": top}


def jax_kernels(run) -> tuple[dict, dict]:
    """Kernel time (ns) and count by name on the GPU plane, for one traced call of run."""
    import jax
    from jax.profiler import ProfileData

    folder = tempfile.mkdtemp()
    jax.profiler.start_trace(folder)
    run()
    jax.profiler.stop_trace()
    data = ProfileData.from_file(sorted(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True))[-1])
    totals, counts = collections.Counter(), collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("Stream"):
                continue
            for event in line.events:
                totals[event.name] += event.duration_ns
                counts[event.name] += 1
    return totals, counts


def run_flax() -> None:
    import jax
    import jax.numpy as jnp

    from llama_flax import FlaxLlamaForCausalLM

    dtype = jnp.bfloat16 if SIZE == "7b" else jnp.float32
    model = FlaxLlamaForCausalLM(config(), dtype=dtype, param_dtype=dtype)
    params = model.params
    prompt = np.random.default_rng(1).integers(3, 32000, (1, PROMPT))
    runners = {"twin": lambda: np.asarray(model.generate(prompt, max_new_tokens=NEW, eos_token_id=[]))}
    try:
        from transformers import FlaxLlamaForCausalLM as HFFlaxLlama
        from transformers import LlamaConfig as HFConfig

        hf_model = HFFlaxLlama(HFConfig(**config().to_dict()), dtype=dtype, _do_init=False)
        hf_generate = jax.jit(lambda p, ids: hf_model.generate(ids, params=p, max_new_tokens=NEW, do_sample=False,
                                                                pad_token_id=0, eos_token_id=10**9).sequences)
        hf_ids = jnp.asarray(prompt, jnp.int32)
        hf_compiled = hf_generate.lower(params, hf_ids).compile()
        runners["transformers"] = lambda: np.asarray(hf_compiled(params, hf_ids))
    except ImportError as e:
        record("transformers", f"not importable: {e}")
    for name, run in runners.items():
        began = time.perf_counter()
        ids = run()
        record(f"{name}_first_call_s", round(time.perf_counter() - began, 1))
        record(f"{name}_ids_head", ids[0, PROMPT:PROMPT + 8].tolist())
    best = interleaved_best_times(runners, passes=3)
    record("tok_s", {name: round(NEW / s, 1) for name, s in best.items()})
    if jax.default_backend() != "gpu":
        return
    for name, run in runners.items():
        if time.time() > DEADLINE - 20:
            break
        record(f"{name}_kernels", kernel_table(*jax_kernels(run), steps=NEW, label=name))
    for compiled in model.__dict__.get("_compiled_generation", {}).values():
        with gzip.open(os.path.join(OUT, f"{RESULTS['tag']}_twin_hlo.txt.gz"), "wt") as f:
            f.write(compiled.as_text())
    if "transformers" in runners:
        with gzip.open(os.path.join(OUT, f"{RESULTS['tag']}_transformers_hlo.txt.gz"), "wt") as f:
            f.write(hf_compiled.as_text())


def run_torch(trials: list[str]) -> None:
    import torch

    model, device, sync = random_torch_model()
    prompt = torch.randint(3, 32000, (1, PROMPT))
    compile_now = device == "cuda"

    def generate() -> None:
        model.generate(prompt, max_new_tokens=NEW, eos_token_id=[], compile=compile_now)
        sync()

    def measure(name: str) -> None:
        began = time.perf_counter()
        generate()
        warmup = time.perf_counter() - began
        seconds = min(interleaved_best_times({name: generate}, passes=3).values())
        record(name, {"tok_s": round(NEW / seconds, 1), "warmup_s": round(warmup, 1)})

    measure("twin")
    if device == "cuda":
        read_bandwidth(torch)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            generate()
        totals, counts = collections.Counter(), collections.Counter()
        for event in prof.key_averages():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                totals[event.key] += event.device_time_total * 1e3
                counts[event.key] += event.count
        record("twin_kernels", kernel_table(totals, counts, steps=NEW, label="twin"))
    for trial in trials:
        if time.time() > DEADLINE - 90:
            break
        model.__dict__["_cuda_decode_step"] = torch_trial(trial)
        torch._dynamo.reset()
        try:
            measure(trial)
        except Exception as e:  # noqa: BLE001 - a failed trial is a result; the next one still runs
            record(trial, repr(e)[:800])


def torch_trial(name: str):
    """A decode step compiled another way, measured beside the twin's."""
    import torch

    from llama_torch import generation

    if name == "max_autotune":
        compiled = torch.compile(generation.decode_step, mode="max-autotune", fullgraph=True)
        return generation.with_inductor_config(compiled, coordinate_descent_tuning=True)
    if name == "efficient_attention":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def step(*args):
            with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                return generation.decode_step(*args)

        return generation.cuda_graph_step(step)
    raise ValueError(f"unknown torch trial {name!r}: expected one of {TORCH_TRIALS}")


def read_bandwidth(torch) -> None:
    """The card's streaming read rate (a 4 GiB bf16 sum) and the batch-1 decode limit it sets."""
    data = torch.randn(2**31, dtype=torch.bfloat16, device="cuda")
    data.sum()
    torch.cuda.synchronize()
    seconds = min(interleaved_best_times({"sum": lambda: (data.sum(), torch.cuda.synchronize())}, passes=5).values())
    read = data.numel() * 2 / seconds
    weights = 13.48e9 if SIZE == "7b" else float("nan")
    record("read_TBps", round(read / 1e12, 3))
    record("limit_tok_s", round(read / weights, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("flax", "torch"), required=True)
    parser.add_argument("--trial", action="append", default=[], choices=TORCH_TRIALS,
                        help="torch only: another way to compile the decode step, measured beside the twin's")
    parser.add_argument("--tag", help="names the JSON and HLO files (default: the backend)")
    args = parser.parse_args()
    if args.trial and args.backend != "torch":
        parser.error("--trial applies to --backend torch")
    RESULTS.update(backend=args.backend, tag=args.tag or args.backend, xla_flags=os.environ.get("XLA_FLAGS", ""))
    began = time.time()
    try:
        run_flax() if args.backend == "flax" else run_torch(args.trial)
    except Exception as e:  # noqa: BLE001 - the JSON must record a failure, and the next stage still run
        record("error", repr(e)[:800])
    record("total_s", round(time.time() - began, 1))


if __name__ == "__main__":
    main()
