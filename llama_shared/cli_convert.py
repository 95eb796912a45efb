"""Convert a checkpoint between Hugging Face, Flax (Orbax) and Meta's original format.

llama-twin convert SRC DST --to {hf,flax,meta} [--from ...] [--dtype] [--shard-size] [--num-shards]
[--overwrite] [--verify]. The source format is detected from its files; DST is written into a
temporary folder beside it and renamed into place when complete.
"""

from __future__ import annotations

import argparse

import numpy as np

from llama_shared.checkpoint import DEFAULT_SHARD_SIZE
from llama_shared.errors import LlamaTwinError

VERIFY_PROMPT_LENGTH = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llama_shared.convert import FORMATS

    parser.add_argument("src", metavar="SRC", help="checkpoint folder to read (never modified)")
    parser.add_argument("dst", metavar="DST", help="folder to write (must be empty or absent unless --overwrite)")
    parser.add_argument("--to", required=True, choices=FORMATS, help="format to write")
    parser.add_argument("--from", dest="from_format", choices=FORMATS, help="format of SRC (default: detected)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="cast floating tensors (default: keep the source's dtypes)")
    parser.add_argument("--shard-size", type=parse_size, default=DEFAULT_SHARD_SIZE, metavar="SIZE",
                        help="largest safetensors file for --to hf, e.g. 5GB, 500MB (default 5GB)")
    parser.add_argument("--num-shards", type=int, default=1, metavar="N",
                        help="model-parallel consolidated.NN.pth files for --to meta (default 1)")
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
    from llama_shared.convert import convert, detect_format

    try:
        src_format = args.from_format or detect_format(args.src)
        convert(args.src, args.dst, args.to, from_format=src_format, dtype=args.dtype, shard_size=args.shard_size,
                num_shards=args.num_shards, overwrite=args.overwrite, progress=args.progress)
        print(f"wrote {args.to} checkpoint {args.dst}")
        if args.verify:
            difference = max_logit_difference(args.src, src_format, args.dst, args.to)
            print(f"max |logit difference| over {VERIFY_PROMPT_LENGTH} tokens, {src_format} vs {args.to}: "
                  f"{difference:.3g}")
    except LlamaTwinError as e:
        print(f"llama-twin convert: error: {e}")
        return 1
    return 0


def max_logit_difference(src: str, src_format: str, dst: str, dst_format: str) -> float:
    """Max abs difference of float32 logits on a fixed prompt, each side run in its backend
    (hf and meta in the torch twin, flax in the Flax twin)."""
    src_logits = _logits(src, src_format)
    dst_logits = _logits(dst, dst_format)
    return float(np.max(np.abs(src_logits - dst_logits)))


def verify_prompt(vocab_size: int, bos_token_id: int | None) -> np.ndarray:
    """A fixed (1, 32) prompt of ids spread over the vocabulary, starting with bos."""
    ids = [(7919 * i + 3) % vocab_size for i in range(VERIFY_PROMPT_LENGTH)]
    if bos_token_id is not None and bos_token_id < vocab_size:
        ids[0] = bos_token_id
    return np.array([ids], dtype=np.int64)


def _logits(path: str, fmt: str) -> np.ndarray:
    from llama_shared.convert import open_source

    source = open_source(path, fmt)
    config = source.config.replace(torch_dtype="float32")
    ids = verify_prompt(config.vocab_size, config.bos_token_id)
    if fmt == "flax":
        import jax.numpy as jnp

        from llama_flax import FlaxLlamaForCausalLM
        from llama_shared.convert_flax import load_flax_params
        from llama_shared.naming import flatten_tree, unflatten_tree

        params = unflatten_tree({p: a.astype(np.float32) for p, a in flatten_tree(load_flax_params(path)).items()})
        model = FlaxLlamaForCausalLM(config, params=params, dtype=jnp.float32)
        return np.asarray(model(ids.astype(np.int32)).logits, dtype=np.float32)
    import torch

    from llama_torch import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    model.tie_weights()
    model.load_checkpoint(_TensorsInMemory(path, {k: a.astype(np.float32) for k, a in source.tensors()}))
    with torch.no_grad():
        return model.eval()(torch.from_numpy(ids)).logits.float().numpy()


class _TensorsInMemory:
    """The read interface of llama_shared.checkpoint.Checkpoint over a dict of arrays."""

    def __init__(self, directory: str, tensors: dict[str, np.ndarray]):
        self.directory, self._tensors = directory, tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._tensors[key].shape

    def dtype(self, key: str) -> np.dtype:
        return self._tensors[key].dtype

    def read(self, key: str) -> np.ndarray:
        return self._tensors[key]

    get = read
