"""Perplexity of a text file under a model, with a sliding window (transformers' recipe).

The text is encoded with the model folder's tokenizer (or --tokenizer); windows of --max-length
tokens start every --stride tokens and score only the tokens the window before did not, so each
is predicted from at least max_length - stride tokens of context.
"""

from __future__ import annotations

import argparse
import sys

from llama_shared.checkpoints import resolve_model_dir
from llama_shared.errors import InputError
from llama_shared.tokenizers import AutoTokenizer
from llama_twin.backends import BACKEND_NAMES, get_backend
from llama_twin.evaluation import text_perplexity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model folder (config.json + safetensors) or hub repo id")
    parser.add_argument("text", metavar="TEXT_FILE", help="UTF-8 text to score")
    parser.add_argument("--backend", default="flax", choices=BACKEND_NAMES, help="which twin runs (default: flax)")
    parser.add_argument("--max-length", type=int,
                        help="tokens per window (default: the model's max_position_embeddings)")
    parser.add_argument("--stride", type=int, help="tokens between window starts (default: --max-length)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="weight and compute dtype (default: float32)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: MODEL)")


def run(args: argparse.Namespace) -> int:
    model_dir = str(resolve_model_dir(args.model))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or model_dir)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    model = get_backend(args.backend).causal_lm.from_pretrained(model_dir, dtype=args.dtype)
    try:
        result = text_perplexity(model, tokenizer, text, args.max_length, args.stride, args.backend)
    except InputError as error:
        print(f"llama-twin perplexity: {error}", file=sys.stderr)
        return 2
    print(f"perplexity {result.perplexity:.4f}  mean nll {result.mean_nll:.6f}  tokens {result.tokens}  "
          f"windows {result.windows}  ({args.backend}, {args.text})")
    return 0
