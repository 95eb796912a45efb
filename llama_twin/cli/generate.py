"""Generate text from prompts (arguments or stdin lines), streamed as it is produced.

    llama-twin generate -m MODEL_DIR_OR_HUB_ID "Once upon a time" --backend torch --max-new-tokens 64
    echo "Tell me a joke" | llama-twin generate -m MODEL --chat --do-sample --temperature 0.7

Without --model the embedded demo model is used. After each reply a closing line on stderr gives
the new tokens, tokens/s after the first token, the time to the first token and the compile time.
A model larger than one device runs sharded: --backend torch over several processes (--nproc N, or
started by torchrun), --backend flax over jax's devices when there are several, split by --mesh.

    llama-twin generate -m MODEL "Once upon a time" --backend torch --nproc 4
    torchrun --nproc-per-node 8 -m llama_twin.cli generate -m MODEL "Once upon a time" --backend torch
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from llama_shared.checkpoints import resolve_model_dir
from llama_shared.streaming import TextStreamer
from llama_shared.tokenizers import AutoTokenizer
from llama_twin.backends import Backend, get_backend
from llama_twin.demo import demo_model_dir
from llama_twin.distributed import (add_sharding_arguments, launched_by_torchrun, load_flax, load_torch, on_mesh,
                                    parse_mesh, run_torch_job, torch_parallel, torchrun_rank)

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
    add_sharding_arguments(parser)


def run(args: argparse.Namespace) -> int:
    parse_mesh(args.mesh)  # a malformed --mesh stops here, before any process starts
    if args.nproc > 1 and args.backend != "torch":
        print("llama-twin generate: --nproc starts torch processes (--backend torch); the Flax twin is sharded "
              "over jax's devices by --mesh", file=sys.stderr)
        return 2
    torch_job = args.backend == "torch" and (args.nproc > 1 or launched_by_torchrun())
    prompts = args.prompts
    if not prompts and torchrun_rank() == 0:
        prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts and not launched_by_torchrun():
        print("llama-twin generate: no prompt given (pass PROMPT arguments or lines on stdin)", file=sys.stderr)
        return 2
    if torch_job:
        return 0 if run_torch_job("generate", generate_on_ranks, args.nproc, args, prompts,
                                  timeout_s=args.timeout) else 1
    backend = get_backend(args.backend)
    model, tokenizer, mesh = _load(backend, args)
    with on_mesh(mesh):
        generate_all(model, tokenizer, backend, prompts, args, model.generate, main_process=True)
    return 0


def generate_on_ranks(args: argparse.Namespace, prompts: list[str]) -> None:
    """On every rank of a torch job: the sharded torch twin generates each prompt (rank 0's prompts,
    its stdin included); rank 0 prints."""
    import torch.distributed as dist

    shared = [prompts]
    dist.broadcast_object_list(shared, src=0)
    prompts = shared[0]
    torch_parallel().check_same_settings({name: value for name, value in vars(args).items() if name != "prompts"})
    if not prompts:
        raise ValueError("no prompt given (pass PROMPT arguments or lines on stdin of rank 0)")
    if args.quantize:
        raise ValueError("--quantize loads a model on one process; run without --nproc or torchrun to quantize")
    directory = demo_model_dir() if args.model is None else resolve_model_dir(args.model)
    model = load_torch(str(directory), parse_mesh(args.mesh), args.dtype)
    generate = partial(torch_parallel().generate, model)
    generate_all(model, AutoTokenizer.from_pretrained(directory), get_backend("torch"), prompts, args, generate,
                 main_process=dist.get_rank() == 0)


def generate_all(model: Any, tokenizer: Any, backend: Backend, prompts: list[str], args: argparse.Namespace,
                 generate: Callable[..., Any], main_process: bool) -> None:
    """Each prompt through generate(ids, streamer=..., stats=..., **sampling), streamed (or printed
    whole) with its closing line, by the main process."""
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
        generate(backend.from_numpy(np.asarray([ids], np.int64)), streamer=streamer, stats=stats, **sampling)
        if main_process:
            if not args.stream:
                _write("".join(pieces))
            _write("\n")
            print(_closing_line(stats), file=sys.stderr, flush=True)


def _load(backend: Backend, args: argparse.Namespace) -> tuple:
    """(model, tokenizer, mesh): the Flax twin sharded over jax's devices when there are several and
    no quantization is asked for; otherwise one model on one device and no mesh."""
    directory = demo_model_dir() if args.model is None else resolve_model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if backend.name == "flax" and not args.quantize:
        model, mesh = load_flax(str(directory), parse_mesh(args.mesh), args.dtype)
        return model, tokenizer, mesh
    extra = {"quantization": args.quantize} if args.quantize else {}
    return backend.causal_lm.from_pretrained(directory, dtype=args.dtype, **extra), tokenizer, None


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
