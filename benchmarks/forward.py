"""CPU prefill throughput of both twins beside transformers' torch Llama, in one run.

A ~100M-parameter random config (hidden 640, 12 layers, 10 heads / 5 kv heads, vocab 32000),
float32, batch 1, a 512-token prompt, logits of the last position only (as generation's prefill).
Each implementation is timed best-of-N after a warm-up (Flax: after compiling); the figure that
matters is the ratio to transformers measured in the same process.

    python -m benchmarks.forward [--tokens 512] [--passes 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np

from benchmarks.timing import interleaved_best_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from llama_flax import FlaxLlamaForCausalLM
    from llama_torch import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=640, intermediate_size=1728,
                                      num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=5,
                                      max_position_embeddings=2048)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    folder = tempfile.mkdtemp()
    reference.save_pretrained(folder)
    ours = LlamaForCausalLM.from_pretrained(folder)
    flax = FlaxLlamaForCausalLM.from_pretrained(folder)

    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(1, args.tokens))
    ids_t, ids_j = torch.tensor(ids), jnp.asarray(ids)

    @torch.inference_mode()
    def run_reference():
        return reference(ids_t, logits_to_keep=1).logits

    @torch.inference_mode()
    def run_torch():
        return ours(ids_t, logits_to_keep=1).logits

    def run_flax():
        return flax(ids_j, logits_to_keep=1).logits.block_until_ready()

    start = time.perf_counter()
    run_flax()
    compile_s = time.perf_counter() - start
    for fn in (run_reference, run_torch):
        fn()
    np.testing.assert_allclose(run_torch().numpy(), run_reference().numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(run_flax()), run_reference().numpy(), atol=1e-4)

    runners = {"transformers_torch": run_reference, "llama_twin_torch": run_torch, "llama_twin_flax": run_flax}
    best = interleaved_best_times(runners, args.passes)
    result = {
        "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "versions": {"torch": torch.__version__, "jax": jax.__version__, "transformers": transformers.__version__},
        "params_millions": round(reference.num_parameters() / 1e6, 1), "tokens": args.tokens,
        "flax_compile_s": round(compile_s, 2),
        "ms": {name: round(1000 * t, 1) for name, t in best.items()},
        "tokens_per_s": {name: round(args.tokens / t) for name, t in best.items()},
        "ratio_to_transformers": {name: round(best["transformers_torch"] / t, 2) for name, t in best.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
