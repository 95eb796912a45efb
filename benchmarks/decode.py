"""CPU decode throughput of both twins beside transformers (torch and Flax) and the bandwidth bound, in one run.

A random float32 config ("small": hidden 1024, 12 layers, 16 heads / 8 kv heads, intermediate 2816,
vocab 32000, ~207M parameters; "tiny": hidden 256, 4 layers), a 32-token prompt, 128 new tokens,
greedy, never stopping early. tokens/s = batch * new tokens / generate wall time (prompt included),
best of N passes taken round-robin after a warm-up (compiles are timed apart). The bandwidth bound is the streaming
read rate measured in the same run divided by the bytes a decode step reads (every weight except
the gathered embedding table); each implementation's fraction of it is printed beside tokens/s.

    python -m benchmarks.decode [--size small|tiny] [--passes 3] [--batches 1,8] [--only twin_flax,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np

from benchmarks.timing import best_time, interleaved_best_times

SIZES = {
    "small": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                  num_attention_heads=16, num_key_value_heads=8),
    "tiny": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4),
}
IMPLEMENTATIONS = ("twin_flax", "twin_torch", "twin_torch_compiled", "hf_flax_jit", "hf_torch_dynamic",
                   "hf_torch_static", "hf_torch_static_compile")


def read_bandwidth(passes: int) -> float:
    """Bytes/s of a streaming read: a sum over 1 GiB of float32 in torch and in XLA, the faster, best of passes."""
    import jax
    import jax.numpy as jnp
    import torch

    buffer = torch.ones(2**28)
    rates = [buffer.numel() * 4 / best_time(lambda: buffer.sum(), passes + 3)]
    del buffer
    array = jnp.ones(2**28)
    total = jax.jit(jnp.sum)
    total(array).block_until_ready()
    rates.append(array.size * 4 / best_time(lambda: total(array).block_until_ready(), passes + 3))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(IMPLEMENTATIONS))
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from llama_flax import FlaxLlamaForCausalLM
    from llama_torch import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    chosen = args.only.split(",")
    config = transformers.LlamaConfig(**SIZES[args.size], max_position_embeddings=2048, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    folder = tempfile.mkdtemp(prefix="decode-bench-")
    hf.save_pretrained(folder)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in hf.named_parameters() if "embed_tokens" not in n)
    wants_torch_twin = {"twin_torch", "twin_torch_compiled"} & set(chosen)
    twin_torch = LlamaForCausalLM.from_pretrained(folder) if wants_torch_twin else None
    twin_flax = FlaxLlamaForCausalLM.from_pretrained(folder) if {"twin_flax", "hf_flax_jit"} & set(chosen) else None

    bandwidth = read_bandwidth(args.passes)
    bound_steps = bandwidth / weight_bytes
    results = {"size": args.size, "params": sum(p.numel() for p in hf.parameters()), "weight_bytes": weight_bytes,
               "read_GBps": round(bandwidth / 1e9, 1), "bound_tok_s_batch1": round(bound_steps, 1),
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "jax": jax.__version__, "transformers": transformers.__version__},
               "runs": []}
    print(f"{args.size}: {results['params'] / 1e6:.0f}M params, {weight_bytes / 1e6:.0f} MB read per step, "
          f"streaming read {bandwidth / 1e9:.1f} GB/s -> bound {bound_steps:.1f} steps/s", flush=True)

    rng = np.random.default_rng(0)
    for batch in (int(b) for b in args.batches.split(",")):
        ids = rng.integers(3, config.vocab_size, (batch, args.prompt))
        ids_torch = torch.from_numpy(ids)
        new = args.new_tokens
        runners = {}
        if "twin_flax" in chosen:
            runners["twin_flax"] = lambda: np.asarray(twin_flax.generate(ids, max_new_tokens=new, eos_token_id=[]))
        if "twin_torch" in chosen:
            runners["twin_torch"] = lambda: twin_torch.generate(ids_torch, max_new_tokens=new, eos_token_id=[])
        if "twin_torch_compiled" in chosen:
            runners["twin_torch_compiled"] = lambda: twin_torch.generate(ids_torch, max_new_tokens=new,
                                                                         eos_token_id=[], compile=True)
        if "hf_flax_jit" in chosen:
            hf_flax = transformers.FlaxLlamaForCausalLM(config, _do_init=False)
            hf_generate = jax.jit(lambda params, prompt: hf_flax.generate(
                prompt, params=params, max_new_tokens=new, do_sample=False, pad_token_id=0,
                eos_token_id=10**9).sequences)
            prompt = jnp.asarray(ids, jnp.int32)
            runners["hf_flax_jit"] = lambda: np.asarray(hf_generate(twin_flax.params, prompt))
        hf_kwargs = dict(attention_mask=torch.ones_like(ids_torch), max_new_tokens=new, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
        with torch.inference_mode():
            if "hf_torch_dynamic" in chosen:
                runners["hf_torch_dynamic"] = lambda: hf.generate(ids_torch, **hf_kwargs)
            if "hf_torch_static" in chosen:
                runners["hf_torch_static"] = lambda: hf.generate(ids_torch, cache_implementation="static", **hf_kwargs)
            if "hf_torch_static_compile" in chosen:
                compiled = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
                compiled.forward = torch.compile(compiled.forward, fullgraph=True)
                runners["hf_torch_static_compile"] = lambda: compiled.generate(
                    ids_torch, cache_implementation="static", **hf_kwargs)
            outputs, warmups = {}, {}
            for name, run in runners.items():
                start = time.perf_counter()
                outputs[name] = np.asarray(run())
                warmups[name] = time.perf_counter() - start
            seconds = interleaved_best_times(runners, args.passes)
        for name, run_seconds in seconds.items():
            tok_s = batch * new / run_seconds
            fraction = tok_s / (bound_steps * batch)
            results["runs"].append({"impl": name, "batch": batch, "tok_s": round(tok_s, 1),
                                    "fraction_of_bound": round(fraction, 3), "warmup_s": round(warmups[name], 1)})
            print(f"batch {batch} {name:24s} {tok_s:8.1f} tok/s  {100 * fraction:5.1f}% of bound  "
                  f"(warm-up incl. compile {warmups[name]:.1f} s)", flush=True)
        for name in [name for name in outputs if name.startswith("twin")]:
            reference = next((outputs[n] for n in outputs if n.startswith("hf")), None)
            if reference is not None:
                print(f"batch {batch} {name} ids equal to transformers: {np.array_equal(outputs[name], reference)}")
        best_reference = max((r["tok_s"] for r in results["runs"] if r["batch"] == batch and r["impl"].startswith("hf")),
                             default=None)
        for run in results["runs"]:
            if run["batch"] == batch and run["impl"].startswith("twin") and best_reference:
                run["vs_best_reference"] = round(run["tok_s"] / best_reference, 2)
                print(f"batch {batch} {run['impl']}: {run['vs_best_reference']:.2f}x the faster reference")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
