"""Compare one checkpoint in Flax, torch and transformers layer by layer; name the first layer that parts.

A model larger than one device runs sharded: the torch twin over several processes (--nproc N, or
started by torchrun), the Flax twin over jax's devices, each on --mesh (default: tensor parallel).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from llama_shared.checkpoints import resolve_model_dir
from llama_shared.config import LlamaConfig
from llama_shared.tokenizers import TOKENIZER_FILES, AutoTokenizer
from llama_twin.distributed import (add_sharding_arguments, launched_by_torchrun, load_flax, on_mesh, parse_mesh,
                                    run_torch_job, torch_world_size, torchrun_rank)
from llama_twin.parity import (IMPLEMENTATIONS, available_backends, load_activations, parity_report,
                               torch_activations_on_ranks)

DEFAULT_PROMPT = "Plants create energy through a process known as"
# Ids used when the checkpoint has no tokenizer: fixed, so runs are comparable.
FALLBACK_TOKENS = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model folder (config.json + safetensors) or hub repo id")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"text to run (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="compute and weight dtype of every implementation (default: float32)")
    parser.add_argument("--tolerance", type=float,
                        help="a layer parts when its max |diff| exceeds this times max(1, max |value|) "
                             "(default: 1e-4 float32, 3e-2 bfloat16, 4e-3 float16)")
    parser.add_argument("--backends", nargs="+", choices=IMPLEMENTATIONS,
                        help="implementations to compare (default: flax, torch and transformers if installed)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the per-layer differences into a PNG")
    add_sharding_arguments(parser)


def prompt_ids(model_dir: str, prompt: str, vocab_size: int) -> tuple[list[int], str | None]:
    """The prompt's ids with the checkpoint's tokenizer, or fixed ids (and a note) when it has none."""
    if any(os.path.exists(os.path.join(model_dir, name)) for name in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(model_dir).encode(prompt), None
    ids = [(7 + 31 * i) % vocab_size for i in range(FALLBACK_TOKENS)]
    return ids, f"note: no tokenizer in {model_dir}; ran {FALLBACK_TOKENS} fixed token ids instead of the prompt"


def run(args: argparse.Namespace) -> int:
    mesh_sizes = parse_mesh(args.mesh)
    model_dir = str(resolve_model_dir(args.model))
    ids, note = prompt_ids(model_dir, args.prompt, LlamaConfig.from_pretrained(model_dir).vocab_size)
    backends = args.backends or available_backends()
    computed = {}
    if "torch" in backends and (args.nproc > 1 or launched_by_torchrun()):
        with tempfile.TemporaryDirectory() as folder:
            out_file = os.path.join(folder, "torch.npz")
            if not run_torch_job("parity", torch_activations_on_ranks, args.nproc, model_dir, ids, args.dtype,
                                 mesh_sizes, out_file, timeout_s=args.timeout):
                return 1
            if torchrun_rank() == 0:
                computed["torch"] = load_activations(out_file)
    if torchrun_rank() > 0:
        return 0  # under torchrun, rank 0 runs the other implementations and reports
    models, mesh = {}, None
    if "flax" in backends:
        models["flax"], mesh = load_flax(model_dir, mesh_sizes, args.dtype)
    with on_mesh(mesh):
        report = parity_report(model_dir, ids, args.dtype, args.tolerance, backends, models, computed)
    if note:
        report.notes.append(note)
    if computed:
        report.notes.append(f"torch: sharded over {torch_world_size(args.nproc)} processes, mesh {args.mesh}")
    if mesh is not None:
        report.notes.append(f"flax: sharded over {mesh.size} devices, mesh (data, fsdp, tensor) = "
                            f"{tuple(mesh.shape.values())}")
    print(report.table())
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0 if report.agrees else 1

