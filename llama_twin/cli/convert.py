"""Convert a checkpoint between Hugging Face, Flax (Orbax), Meta's original format and GGUF.

llama-twin convert SRC DST --to {hf,flax,meta,gguf} [--from ...] [--dtype] [--shard-size]
[--num-shards] [--type] [--overwrite] [--verify]. The source format is detected from its files (a
GGUF source is one .gguf file, and so is a GGUF destination); DST is written into a temporary folder
(or file) beside it and renamed into place when complete.
"""

from __future__ import annotations

import argparse

from llama_shared.checkpoints import DEFAULT_SHARD_SIZE
from llama_twin.conversion import FORMATS, convert, detect_format
from llama_twin.conversion.formats.gguf import GGUF_TYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="checkpoint folder or .gguf file to read (never modified)")
    parser.add_argument("dst", metavar="DST",
                        help="folder (or .gguf file) to write (must be empty or absent unless --overwrite)")
    parser.add_argument("--to", required=True, choices=FORMATS, help="format to write")
    parser.add_argument("--from", dest="from_format", choices=FORMATS, help="format of SRC (default: detected)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="cast floating tensors (default: keep the source's dtypes)")
    parser.add_argument("--shard-size", type=parse_size, default=DEFAULT_SHARD_SIZE, metavar="SIZE",
                        help="largest safetensors file for --to hf, e.g. 5GB, 500MB (default 5GB)")
    parser.add_argument("--num-shards", type=int, default=1, metavar="N",
                        help="model-parallel consolidated.NN.pth files for --to meta (default 1)")
    parser.add_argument("--type", dest="gguf_type", choices=GGUF_TYPES, default="f16",
                        help="GGML type of the matrices for --to gguf (default f16; norms stay f32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    parser.add_argument("--verify", action="store_true",
                        help="load SRC and DST in their backends and print the max logit difference on a fixed prompt")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def parse_size(text: str) -> int:
    """Bytes from "5GB", "500MB", "2GiB" or a plain number."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    stripped = text.strip().upper()
    number = stripped.rstrip("KMGIB")
    try:
        size = int(float(number) * units[stripped[len(number):]])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (expected e.g. 5GB, 500MB, 2GiB)") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return size


def run(args: argparse.Namespace) -> int:
    src_format = args.from_format or detect_format(args.src)
    convert(args.src, args.dst, args.to, from_format=src_format, dtype=args.dtype, shard_size=args.shard_size,
            num_shards=args.num_shards, gguf_type=args.gguf_type, overwrite=args.overwrite, progress=args.progress)
    print(f"wrote {args.to} checkpoint {args.dst}")
    if args.verify:
        from llama_twin.conversion.verify import VERIFY_PROMPT_LENGTH, max_logit_difference  # loads both twins

        difference = max_logit_difference(args.src, src_format, args.dst, args.to)
        print(f"max |logit difference| over {VERIFY_PROMPT_LENGTH} tokens, {src_format} vs {args.to}: "
              f"{difference:.3g}")
    return 0
