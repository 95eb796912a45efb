"""Mean KL(float || quantized) per token of the demo model (a trained one) for every quantization setting.

The demo model (llama_twin.demo_model_dir: 4 layers, hidden 256, intermediate 688, trained on the
King James Bible) scores a fixed King-James-flavoured text in float32; each quantized copy scores
it too (torch twin, portable kernel: exact float32 compute, so the figure is the format's alone),
and the table gives the mean over tokens of KL between the next-token distributions. 688 is
divisible by 16 only, so settings with groups of 32 or more leave down_proj in float (marked
"no down_proj"); g16 quantizes every layer. (The CPU kernels compute the same float32 values in
another order, so they add nothing to these figures.) tests/twins/test_quantization.py bounds them.

    python -m benchmarks.quant_kl
"""

from __future__ import annotations

import numpy as np
import torch

from llama_shared import AutoTokenizer
from llama_shared import quantization as q
from llama_torch import LlamaForCausalLM
from llama_torch import quantization as torch_quant
from llama_twin import demo_model_dir

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
        "darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God "
        "said, Let there be light: and there was light. And God saw the light, that it was good: and God divided "
        "the light from the darkness. And the LORD spake unto Moses, saying, Speak unto the children of Israel, "
        "that they bring me an offering: of every man that giveth it willingly with his heart ye shall take my "
        "offering. Blessed are the poor in spirit: for theirs is the kingdom of heaven. Blessed are they that "
        "mourn: for they shall be comforted.")
NO_DOWN = tuple(m for m in q.DEFAULT_MODULES if m != "down_proj")


def settings() -> dict[str, q.QuantizationConfig]:
    """{row label: settings}."""
    rows = {"int8": q.QuantizationConfig(8), "int8-g32 (no down_proj)": q.QuantizationConfig(8, 32, modules=NO_DOWN)}
    for zero, kwargs in (("", {}), ("-fzp", dict(symmetric=False, zero_point_domain="float"))):
        rows[f"int4-g16{zero}"] = q.QuantizationConfig(4, 16, **kwargs)
        for group in (32, 64, 128):
            rows[f"int4-g{group}{zero} (no down_proj)"] = q.QuantizationConfig(4, group, modules=NO_DOWN, **kwargs)
    return rows


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_table() -> tuple[dict[str, float], float, int]:
    """({row: mean KL per token}, float entropy per token, tokens scored)."""
    path = demo_model_dir()
    ids = torch.tensor([AutoTokenizer.from_pretrained(path)(TEXT)["input_ids"]])
    with torch.no_grad():
        log_p = log_softmax(LlamaForCausalLM.from_pretrained(path)(ids).logits[0].numpy())
        table = {}
        for label, quantization in settings().items():
            model = torch_quant.use_kernel(LlamaForCausalLM.from_pretrained(path, quantization=quantization), "portable")
            log_q = log_softmax(model(ids).logits[0].numpy())
            table[label] = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))
    entropy = float(np.mean(-np.sum(np.exp(log_p) * log_p, axis=-1)))
    return table, entropy, ids.shape[1]


def main() -> None:
    table, entropy, tokens = kl_table()
    print(f"demo model, {tokens} tokens, float32 entropy {entropy:.3f} nats/token")
    print("| setting | mean KL(float || quantized) per token, nats |")
    print("|---|---|")
    for label, kl in table.items():
        print(f"| {label} | {kl:.5f} |")


if __name__ == "__main__":
    main()
