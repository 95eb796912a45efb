"""Twin files read side by side: each module the two twins share defines the same top-level names
in the same order. Names only one side has, and the few the twins spell differently, are listed
here and nowhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TWIN_MODULES = ("modeling", "cache", "generation", "loading", "quantization", "lora", "parallel")
# Modules both twins have that are not compared name by name, and why.
UNPAIRED = {
    # The rules are stated in each framework's own terms: Flax names the logical axes of every
    # parameter and activation and maps them onto mesh axes (XLA propagates the rest); torch gives
    # each module a tensor-parallel style (DTensor redistributes between them) and picks the FSDP2
    # units. Only MESH_AXES is common: compared name by name, the file would be its allow-list.
    "sharding",
}

# Flax name -> the torch twin's name for the same thing: Linen modules are "...Module" where torch's
# nn.Module is the public class; Flax's Dense is torch's Linear.
FLAX_SPELLING = {
    "LlamaModule": "LlamaModel",
    "LlamaForCausalLMModule": "LlamaForCausalLM",
    "LlamaForSequenceClassificationModule": "LlamaForSequenceClassification",
    "LlamaForQuestionAnsweringModule": "LlamaForQuestionAnswering",
    "LlamaForTokenClassificationModule": "LlamaForTokenClassification",
    "FlaxPreTrainedModel": "PreTrainedModel",
    "QuantizedDense": "QuantizedLinear",
    "QuantizedEmbed": "QuantizedEmbedding",  # Flax's nn.Embed is torch's nn.Embedding
    "quantized_params": "register_quantized",  # a layer's quantized tensors: Flax params, torch buffers
    "shard_params": "shard_model",  # Flax places a param tree; torch shards the model object in place
    "LoraDense": "LoraLinear",
    "LoraQuantizedDense": "LoraQuantizedLinear",
}

# What only one twin has, per module, and why.
FLAX_ONLY = {
    "modeling": {
        "Array",  # the jax.Array alias of type hints
        "REMAT_POLICIES",  # rematerialisation is a JAX training feature
        "linear",  # builds each Dense (torch declares nn.Linear inline; quantize swaps it later)
        "LlamaScannedLayer",  # a decoder layer as nn.scan's body (scan_layers is a JAX compile-time feature)
        "LlamaLayers",  # the layer loop as a module of its own, so remat can wrap each layer and scan them
        "masked_cross_entropy",  # optax has no ignore_index; torch's cross_entropy does
        # Attention as XLA:CPU runs it over the cache in place (torch's SDPA is one call) ...
        "LARGE_NEGATIVE", "grouped_attention",
        # ... and the cache's (batch * kv_heads, slots, head_dim) layout to and from (batch, slots, kv_heads, head_dim)
        "kv_rows", "kv_columns",
        "FlaxLlamaModel", "FlaxLlamaForCausalLM", "FlaxLlamaForSequenceClassification",
        "FlaxLlamaForQuestionAnswering", "FlaxLlamaForTokenClassification",  # module + params holders
    },
    "cache": {"LayerCache"},  # a layer's view of the functional cache (torch updates its lists in place)
    "generation": {
        "Array", "SamplingValues", "DecodeSettings", "DecodeState", "start", "advance", "is_running",
        "generate_loop", "sampling_values",  # the whole decode loop is one jitted lax.while_loop
    },
    "loading": {
        "MSGPACK_FILE",  # transformers' old Flax weights file
        "host_param",  # host-side cast/transpose before device_put (shared with sharded loading)
    },
    "quantization": {
        "Array",
        # The native kernel's products with the portable product's derivatives: a custom_jvp function
        # (torch's is the NativeProduct autograd Function) ...
        "native_matmuls",
        # ... and the product is a function of the param tree (torch's QuantizedLinear.forward chooses,
        # with QuantizedWeight.uses_cpu_kernel)
        "portable_matmul", "takes_native", "quantized_matmul",
    },
    "parallel": {
        "DATA_AXIS_NAME", "pmap_forward", "pmap_train_step", "split_for_pmap",  # pmap: JAX's data parallelism
        "jit_forward", "jit_train_step",  # jit compiles for the mesh; a sharded torch model is called directly
    },
    "lora": {
        "Array",
        "LoraUpdate",  # a tied lm_head's update alone: Flax's tied head is the embedding's attend, no layer
    },
}
TORCH_ONLY = {
    "modeling": set(),
    "cache": set(),
    "generation": {
        "TOKEN_IDS_CHECKED", "token_ids_checked",  # skips forward's host-side id check inside generate
        "seconds_since",  # timings that wait for the CUDA stream
        "cuda_graph_step", "frozen_cpu_step", "with_inductor_config",  # torch.compile'd decode steps
    },
    "loading": set(),
    "quantization": {
        "replace_linears",  # swaps nn.Linear after construction (Flax picks in linear())
        "fill_quantized",  # quantizes into a built layer's buffers (Flax's quantize builds the param tree)
        "NativeProduct",  # the native kernel's autograd Function (Flax's native_matmuls is a custom_jvp)
        "kernel_rows", "as_output",  # x to the kernel's rows and back (inside Flax's native_matmuls)
        "has_global_module_hooks",  # torch's global forward hooks, which a joined call would skip
        "TiedQuantizedHead",  # a module for the tied head (Flax's model calls the embedding's attend())
        # the linear layer's and the embedding's product on the configured kernel (Flax's is the
        # quantized_matmul function both modules call)
        "QuantizedWeight",
    },
    "parallel": {
        "DEFAULT_TIMEOUT_S",  # torch.distributed collectives wait until a timeout; XLA's collectives have none to set
        "SPAWN_GRACE_S",  # how long spawned processes may take to report their errors
        "local_device",  # one process per device (jax places global arrays itself)
        "place_block", "local_block",  # the loader's per-tensor copy (Flax's is a callback inside from_pretrained_sharded)
        "save_pretrained_sharded",  # jax gathers a sharded param tree for save_pretrained by itself
        "train_step",  # torch has no trainer: one step on a sharded model (Flax: Trainer and jit_train_step)
        # Each torch rank runs its own program, so ranks compare launch settings and failures (an
        # SPMD jax program is one program over global arrays) ...
        "agreed", "check_same_settings",
        "spawn", "distributed",  # ... and N processes are started here (jax simulates devices in one process)
    },
    "lora": {"add_lora_layers"},  # swaps the targeted layers after construction (Flax picks in linear())
}


def public_names(path: Path) -> list[str]:
    """Top-level functions, classes and assigned names not starting with an underscore, in order."""
    names = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [name for name in names if not name.startswith("_")]


def twin_mismatch(flax_names: list[str], torch_names: list[str], flax_only: set[str],
                  torch_only: set[str]) -> list[str]:
    """Problems in one pair of files: names missing on one side, names out of order, stale allow-list entries."""
    problems = [f"allow-listed {n!r} is not in the Flax file" for n in sorted(flax_only - set(flax_names))]
    problems += [f"allow-listed {n!r} is not in the torch file" for n in sorted(torch_only - set(torch_names))]
    flax_side = [FLAX_SPELLING.get(n, n) for n in flax_names if n not in flax_only]
    torch_side = [n for n in torch_names if n not in torch_only]
    problems += [f"torch has no twin of Flax's {n!r}" for n in flax_side if n not in torch_side]
    problems += [f"Flax has no twin of torch's {n!r}" for n in torch_side if n not in flax_side]
    common_flax = [n for n in flax_side if n in torch_side]
    common_torch = [n for n in torch_side if n in flax_side]
    if common_flax != common_torch:
        problems.append(f"the twins define their shared names in different orders: Flax {common_flax}, "
                        f"torch {common_torch}")
    return problems


@pytest.mark.parametrize("module", TWIN_MODULES)
def test_twin_files_define_the_same_names_in_the_same_order(module):
    flax_names = public_names(ROOT / "llama_flax" / f"{module}.py")
    torch_names = public_names(ROOT / "llama_torch" / f"{module}.py")
    assert twin_mismatch(flax_names, torch_names, FLAX_ONLY[module], TORCH_ONLY[module]) == []


def test_a_renamed_or_moved_twin_is_reported():
    flax = ["LlamaRMSNorm", "LlamaMLP", "LlamaModule"]
    assert twin_mismatch(flax, ["LlamaRMSNorm", "LlamaFeedForward", "LlamaModel"], set(), set()) == [
        "torch has no twin of Flax's 'LlamaMLP'", "Flax has no twin of torch's 'LlamaFeedForward'"]
    assert twin_mismatch(flax, ["LlamaMLP", "LlamaRMSNorm", "LlamaModel"], set(), set()) == [
        "the twins define their shared names in different orders: Flax ['LlamaRMSNorm', 'LlamaMLP', "
        "'LlamaModel'], torch ['LlamaMLP', 'LlamaRMSNorm', 'LlamaModel']"]


def test_files_only_one_twin_has_are_the_known_ones():
    """A new module in one twin is either given a twin or named here, on purpose."""
    flax = {p.stem for p in (ROOT / "llama_flax").glob("*.py")} - {"__init__"}
    torch = {p.stem for p in (ROOT / "llama_torch").glob("*.py")} - {"__init__"}
    assert flax - torch == {"matmul", "training", "scan", "kernels"}
    assert torch - flax == {"tensors"}
    assert flax & torch == set(TWIN_MODULES) | UNPAIRED
