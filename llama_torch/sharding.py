"""The torch twin's sharding rules: the tensor-parallel plan (which torch.distributed parallel style
each module takes) and the FSDP2 wrapping rule, on a (data, fsdp, tensor) mesh as in the Flax twin.

Tensor parallelism follows Megatron's layout, as torchtitan and gpt-fast's tp.py do: q/k/v and
gate/up are split by columns (whole heads, MLP rows), o and down by rows, so a decoder layer
all-reduces once after attention and once after the MLP; the embedding is split by vocabulary rows
(a masked lookup, then an all-reduce) and lm_head by vocabulary columns (the logits are
all-gathered, so every rank picks the same next token). Norms, rotary tables and the small task
heads stay whole on every rank. FSDP2 (fully_shard) then shards what each rank holds over the data
and fsdp axes, one unit per decoder layer plus the root. The runners (meshes, sharded loading,
generate, the train step, launching) are in llama_torch.parallel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from llama_shared.config import LlamaConfig
from llama_shared.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Module path inside a decoder layer -> its style: column-wise in, row-wise out.
LAYER_PLAN: tuple[tuple[str, type[ParallelStyle]], ...] = (
    ("self_attn.q_proj", ColwiseParallel),
    ("self_attn.k_proj", ColwiseParallel),
    ("self_attn.v_proj", ColwiseParallel),
    ("self_attn.o_proj", RowwiseParallel),
    ("mlp.gate_proj", ColwiseParallel),
    ("mlp.up_proj", ColwiseParallel),
    ("mlp.down_proj", RowwiseParallel),
)


def check_tensor_parallel(config: LlamaConfig, size: int) -> None:
    """Raise ConfigError unless size tensor-parallel ranks can each hold whole heads and an equal
    share of the MLP (a rank cannot hold part of a head; GQA's key/value heads split too)."""
    fields = {"num_attention_heads": config.num_attention_heads,
              "num_key_value_heads": config.num_key_value_heads,
              "intermediate_size": config.intermediate_size}
    for field, value in fields.items():
        if value % size:
            raise ConfigError(f"tensor parallelism over {size} ranks needs {field} divisible by {size}, but "
                              f"config.{field} is {value}; choose a tensor size that divides "
                              f"{config.num_attention_heads} query and {config.num_key_value_heads} key/value "
                              f"heads and the MLP's {config.intermediate_size} rows")


def tensor_parallel_plan(model: nn.Module, size: int) -> dict[str, ParallelStyle]:
    """Module path -> parallel style for a model of the twin (any head class) on size ranks.

    The embedding and lm_head are split by vocabulary only when size divides vocab_size; otherwise
    they stay whole on every rank.
    """
    base = model.base_prefix + "." if model.base_prefix else ""
    plan: dict[str, ParallelStyle] = {}
    vocab_splits = model.config.vocab_size % size == 0
    if vocab_splits:
        plan[f"{base}embed_tokens"] = RowwiseParallel(input_layouts=Replicate())
    for i in range(model.config.num_hidden_layers):
        for path, style in LAYER_PLAN:
            plan[f"{base}layers.{i}.{path}"] = style()
    if vocab_splits and hasattr(model, "lm_head"):
        plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    return plan


def apply_tensor_parallel(model: nn.Module, mesh: DeviceMesh) -> None:
    """Split the model over a one-axis mesh by tensor_parallel_plan, in place; each attention module
    then counts only the heads it holds, and tied embeddings stay tied."""
    size = mesh.size()
    check_tensor_parallel(model.config, size)
    parallelize_module(model, mesh, tensor_parallel_plan(model, size))
    for module in model.modules():
        if hasattr(module, "num_kv_heads"):
            module.num_heads //= size
            module.num_kv_heads //= size
    model.tie_weights()


def apply_fsdp(model: nn.Module, mesh: DeviceMesh) -> None:
    """fully_shard each decoder layer, then the root (embeddings, final norm and the heads), over a
    one-axis (fsdp) or two-axis (data, fsdp: HSDP) mesh."""
    base = model.get_submodule(model.base_prefix) if model.base_prefix else model
    for layer in base.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.register_forward_hook(_reshard_after_inference)


def _reshard_after_inference(model: nn.Module, args: Any, output: Any) -> None:
    """FSDP2 keeps the root's parameters gathered after forward, for the backward that follows. After
    a forward without gradients nothing follows: shard them again, or the root would keep whole
    copies (the embeddings and lm_head) and a later training step would update shards its forward
    does not read."""
    if not torch.is_grad_enabled():
        model.reshard()
