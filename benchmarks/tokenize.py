"""Batch-encode 10k short texts with llama-twin's tokenizers and with transformers' fast tokenizers
in the same run; print each time and the speed ratio (reference time / ours, goal >= 1.0).

Run: python -m benchmarks.tokenize [--texts 10000] [--repeats 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file's name shadows the standard library's `tokenize` (used by inspect, numpy, ...):
# drop its own folder from the import path before anything imports it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from tests.tokenizer_files import english_ish_corpus, hf_llama3_fast, llama3_tiktoken_path, trained_spm_path  # noqa: E402

from llama_shared.tokenizers import Llama3Tokenizer, LlamaTokenizerFast  # noqa: E402
from llama_shared.tokenizers.llama3 import LLAMA3_SPECIAL_TOKENS  # noqa: E402


def best_time(fn, texts: list[str], repeats: int) -> tuple[float, list[list[int]]]:
    """Fastest of `repeats` runs (seconds) and the ids of the last run."""
    best, ids = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        ids = fn(texts)["input_ids"]
        best = min(best, time.perf_counter() - start)
    return best, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import transformers

    texts = english_ish_corpus(n_lines=args.texts, seed=1)
    spm_path = str(trained_spm_path())
    pairs = {
        "sentencepiece BPE (LlamaTokenizerFast)": (
            LlamaTokenizerFast(spm_path, legacy=False, add_prefix_space=True),
            transformers.LlamaTokenizerFast(vocab_file=spm_path, from_slow=True, legacy=False, add_prefix_space=True)),
        "Llama 3 tiktoken (Llama3Tokenizer)": (
            Llama3Tokenizer(llama3_tiktoken_path()), hf_llama3_fast(tuple(LLAMA3_SPECIAL_TOKENS["3.1"]))),
    }
    print(f"transformers {transformers.__version__}; {len(texts)} texts, mean {sum(map(len, texts)) / len(texts):.0f} "
          f"chars; best of {args.repeats}")
    for name, (ours, ref) in pairs.items():
        ours_s, ours_ids = best_time(ours, texts, args.repeats)
        ref_s, ref_ids = best_time(ref, texts, args.repeats)
        if ours_ids != ref_ids:
            raise SystemExit(f"{name}: ids differ from transformers")
        print(f"{name}: ours {ours_s * 1e3:.1f} ms, transformers fast {ref_s * 1e3:.1f} ms, "
              f"ratio {ref_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
