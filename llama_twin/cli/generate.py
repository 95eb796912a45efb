"""Generate text from prompts (arguments or stdin lines), streamed as it is produced.

    llama-twin generate -m MODEL_DIR_OR_HUB_ID "Once upon a time" --backend torch --max-new-tokens 64
    echo "Tell me a joke" | llama-twin generate -m MODEL --chat --do-sample --temperature 0.7

Without --model the embedded demo model is used. After each reply a closing line on stderr gives
the new tokens, tokens/s after the first token, the time to the first token and the compile time.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from llama_shared.checkpoints import resolve_model_dir
from llama_shared.streaming import TextStreamer
from llama_shared.tokenizers import AutoTokenizer
from llama_twin.backends import Backend, get_backend
from llama_twin.demo import demo_model_dir

DTYPES = ("float32", "bfloat16", "float16", "auto")

DEFAULT_MAX_NEW_TOKENS = 256  # transformers' text-generation pipeline default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts (default: one per line of stdin)")
    parser.add_argument("-m", "--model", help="model folder or hub repo id (default: the embedded demo model)")
    parser.add_argument("--backend", choices=("flax", "torch"), default="flax", help="default: flax")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights and compute (default: float32)")
    parser.add_argument("--quantize", choices=("int8", "int4"), help="weight-only quantization applied as it loads")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    parser.add_argument("--system", help="system message for --chat")
    parser.add_argument("--max-new-tokens", type=int, help=f"default: the model's generation_config.json, "
                        f"else {DEFAULT_MAX_NEW_TOKENS}")
    parser.add_argument("--min-new-tokens", type=int)
    parser.add_argument("--do-sample", action="store_true", default=None, help="sample (default: the model's "
                        "generation_config.json, else greedy)")
    parser.add_argument("--greedy", dest="do_sample", action="store_false", help="argmax decoding")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int, help="0 switches it off")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--min-p", type=float)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--seed", type=int, help="makes sampling reproducible")
    parser.add_argument("--no-stream", dest="stream", action="store_false",
                        help="print each reply when it is complete")


def run(args: argparse.Namespace) -> int:
    prompts = args.prompts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        print("llama-twin generate: no prompt given (pass PROMPT arguments or lines on stdin)", file=sys.stderr)
        return 2
    backend = get_backend(args.backend)
    model, tokenizer = _load(backend, args)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = model.generation_defaults().max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    sampling = dict(max_new_tokens=max_new_tokens, min_new_tokens=args.min_new_tokens,
                    do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    for prompt in prompts:
        ids = _encode(tokenizer, prompt, args)
        pieces = []
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True,
                                on_text=_write if args.stream else pieces.append)
        stats = {}
        model.generate(backend.from_numpy(np.asarray([ids], np.int64)), streamer=streamer, stats=stats, **sampling)
        if not args.stream:
            _write("".join(pieces))
        _write("\n")
        print(_closing_line(stats), file=sys.stderr, flush=True)
    return 0


def _load(backend: Backend, args: argparse.Namespace) -> tuple:
    directory = demo_model_dir() if args.model is None else resolve_model_dir(args.model)
    extra = {"quantization": args.quantize} if args.quantize else {}
    model = backend.causal_lm.from_pretrained(directory, dtype=args.dtype, **extra)
    return model, AutoTokenizer.from_pretrained(directory)


def _encode(tokenizer, prompt: str, args: argparse.Namespace) -> list[int]:
    if not args.chat:
        return list(tokenizer.encode(prompt))
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": prompt}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _closing_line(stats: dict) -> str:
    """[N tokens, X tok/s, first token after Y ms, compile Z s]: rate over the tokens after the first."""
    count, first, rest = stats["new_tokens"], stats["time_to_first_token_s"], stats["decode_s"]
    rate = (count - 1) / rest if count > 1 and rest > 0 else float("nan")
    line = f"[{count} tokens, {rate:.1f} tok/s, first token after {1000 * first:.0f} ms"
    if "compile_s" in stats:
        line += f", compile {stats['compile_s']:.1f} s"
    return line + "]"
