"""CPU batch-1 decode tokens/s of int8 and int4 weight-only models beside the float model, same run.

Both twins decode greedily with their own generate() from a 32-token prompt on random weights.
Every figure is a ratio to the float model of the same twin and compute dtype, measured in this
process (best of PASSES passes, because the development machine's second core comes and goes).

    python -m benchmarks.quant            # SIZE=small (default) or SIZE=tiny
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from llama_flax import quantization as flax_quant  # noqa: E402
from llama_flax.modeling import FlaxLlamaForCausalLM  # noqa: E402
from llama_shared.checkpoints import save_tensors  # noqa: E402
from llama_shared.config import LlamaConfig  # noqa: E402
from llama_torch import quantization as torch_quant  # noqa: E402
from llama_torch.modeling import LlamaForCausalLM  # noqa: E402

SIZES = {"tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=32000),
         "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=6, num_attention_heads=16,
                       num_key_value_heads=8, vocab_size=32000)}
PROMPT, NEW_TOKENS, PASSES = 32, 32, 3
MODES = [("float", None, None), ("int8", "int8", None), ("int4-g128", "int4", 128)]


def save_random_model(directory: str, size: str) -> str:
    config = LlamaConfig(**SIZES[size], max_position_embeddings=512, eos_token_id=None)
    model = LlamaForCausalLM(config)
    config.save_pretrained(directory)
    save_tensors(directory, {k: v.detach().numpy() for k, v in model.state_dict().items()})
    return directory


def best_tokens_per_second(run) -> float:
    run()  # compile / warm up
    best = float("inf")
    for _ in range(PASSES):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return NEW_TOKENS / best


def torch_row(directory: str, dtype: torch.dtype, prompt: np.ndarray) -> dict[str, float]:
    out = {}
    ids = torch.from_numpy(prompt)
    for name, quantization, group_size in MODES:
        model = LlamaForCausalLM.from_pretrained(directory, dtype=dtype)
        if quantization:
            torch_quant.quantize(model, quantization, group_size)
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
            assert generated.shape[1] == PROMPT + NEW_TOKENS
            out[name] = best_tokens_per_second(lambda: model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False))
    return out


def flax_row(directory: str, dtype, prompt: np.ndarray) -> dict[str, float]:
    out = {}
    ids = jnp.asarray(prompt)
    for name, quantization, group_size in MODES:
        model = FlaxLlamaForCausalLM.from_pretrained(directory, dtype=dtype)
        if quantization:
            flax_quant.quantize(model, quantization, group_size)
        run = lambda: jax.block_until_ready(model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False))  # noqa: E731
        assert run().shape[1] == PROMPT + NEW_TOKENS
        out[name] = best_tokens_per_second(run)
    return out


def main() -> None:
    size = os.environ.get("SIZE", "small")
    torch.manual_seed(0)
    prompt = np.random.default_rng(0).integers(3, SIZES[size]["vocab_size"], (1, PROMPT))
    print(f"size {size}: {SIZES[size]}; prompt {PROMPT}, {NEW_TOKENS} new tokens, batch 1, best of {PASSES}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}")
    with tempfile.TemporaryDirectory() as directory:
        save_random_model(directory, size)
        rows = {"torch float32": torch_row(directory, torch.float32, prompt),
                "torch bfloat16": torch_row(directory, torch.bfloat16, prompt),
                "flax float32": flax_row(directory, jnp.float32, prompt),
                "flax bfloat16": flax_row(directory, jnp.bfloat16, prompt)}
    print(f"| twin, compute dtype | {' | '.join(name for name, _, _ in MODES)} |")
    print(f"|---|{'---|' * len(MODES)}")
    for label, row in rows.items():
        cells = [f"{row['float']:.1f} tok/s"] + [f"{row[name]:.1f} tok/s ({row[name] / row['float']:.2f}x)"
                                                for name, _, _ in MODES[1:]]
        print(f"| {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
