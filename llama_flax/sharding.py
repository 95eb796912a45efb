"""The Flax twin's sharding rules: logical names for every parameter and activation axis, and the
table that maps them onto a (data, fsdp, tensor) mesh.

LOGICAL_AXIS_RULES maps logical names to mesh axes: FSDP shards parameters along the embedding
axis, tensor parallelism splits heads, the MLP and the vocabulary, the batch is split over data
and fsdp, and the stacked axis of scanned layers stays whole (each device holds its slice of every
layer, so the scan never moves a layer between devices). A mesh axis that does not divide a
dimension is dropped for that dimension (it stays replicated), so one rule table serves every
model size, e.g. two kv heads on four tensor shards. A LoRA adapter's A [in, r] and B [r, out] take
their base kernel's input and output axes and keep the small rank axis whole, so the update's
products line up with the base layer's; a quantized layer's qweight [out, in] and scales take the
axes of the kernel it replaces.
The runners that use these rules (meshes, jit, pmap, sharded loading) are in llama_flax.parallel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from llama_flax.scan import SCAN
from llama_shared.naming import flatten_tree, unflatten_tree

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (MaxText's style; "hidden" is the model dimension of activations and
# of vectors such as norm weights, kept whole).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("length", None),
    ("head_dim", None),
    ("hidden", None),
    ("labels", None),
    ("layers", None),
    ("lora_rank", None),
)

# Parameter path (transformers' Flax path joined with "/") -> logical axes; the first match wins.
PARAM_LOGICAL_AXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"embed_tokens/embedding", ("vocab", "embed")),
    (r"self_attn/q_proj/kernel", ("embed", "heads")),
    (r"self_attn/[kv]_proj/kernel", ("embed", "kv_heads")),
    (r"self_attn/q_proj/bias", ("heads",)),
    (r"self_attn/[kv]_proj/bias", ("kv_heads",)),
    (r"self_attn/o_proj/kernel", ("heads", "embed")),
    (r"mlp/(gate|up)_proj/kernel", ("embed", "mlp")),
    (r"mlp/(gate|up)_proj/bias", ("mlp",)),
    (r"mlp/down_proj/kernel", ("mlp", "embed")),
    (r"(o_proj|down_proj)/bias", ("hidden",)),
    (r"(input_layernorm|post_attention_layernorm|norm)/weight", ("hidden",)),
    (r"lm_head/kernel", ("embed", "vocab")),
    (r"(score|qa_outputs)/kernel", ("embed", "labels")),
    (r"(score|qa_outputs)/bias", ("labels",)),
)
_PARAM_PATTERNS = tuple((re.compile(rf"(^|/){pattern}$"), axes) for pattern, axes in PARAM_LOGICAL_AXES)
# Scanned layers (llama_flax.scan) stack each layer param along a leading "layers" axis.
_STACKED = re.compile(rf"(^|/)layers/{SCAN}/")
# Params placed by the axes of the kernel of their layer: LoRA adapters and quantized weights.
_ADAPTER = re.compile(r"^(.*)/lora_(A|B)/kernel$")
_QUANTIZED = re.compile(r"^(.*)/(qweight|scales|zeros)$")
_RULES = dict(LOGICAL_AXIS_RULES)


def param_logical_axes(path: tuple[str, ...] | str) -> tuple[str, ...]:
    """Logical axes of a parameter, by its Flax path (a stacked layer param's first axis is "layers")."""
    name = path if isinstance(path, str) else "/".join(path)
    adapter, quantized = _ADAPTER.match(name), _QUANTIZED.match(name)
    if adapter or quantized:
        *lead, into, out = param_logical_axes(f"{(adapter or quantized).group(1)}/kernel")
        if adapter:
            return (*lead, into, "lora_rank") if adapter.group(2) == "A" else (*lead, "lora_rank", out)
        return (*lead, out, into) if quantized.group(2) == "qweight" else (*lead, out, None)
    for pattern, axes in _PARAM_PATTERNS:
        if pattern.search(name):
            return ("layers", *axes) if _STACKED.search(name) else axes
    raise ValueError(f"parameter {name!r} has no entry in llama_flax.sharding.PARAM_LOGICAL_AXES")


def fit_spec(logical_axes: tuple[str | None, ...], shape: tuple[int, ...], axis_sizes: Mapping[str, int]) -> P:
    """The mesh PartitionSpec for logical axes, keeping per dimension only the mesh axes (of size > 1)
    that divide it."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {logical_axes} do not match an array of shape {tuple(shape)}")
    spec = []
    for name, size in zip(logical_axes, shape):
        wanted = _RULES[name] if name is not None else None
        wanted = (wanted,) if isinstance(wanted, str) else (wanted or ())
        kept, product = [], 1
        for axis in wanted:
            if axis_sizes.get(axis, 1) > 1 and size % (product * axis_sizes[axis]) == 0:
                kept.append(axis)
                product *= axis_sizes[axis]
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*spec)


def param_specs(params: Any, mesh: Mesh) -> Any:
    """PartitionSpecs for a param tree (arrays or ShapeDtypeStructs), same structure."""
    flat = flatten_tree(params)
    return unflatten_tree({path: fit_spec(param_logical_axes(path), leaf.shape, mesh.shape)
                           for path, leaf in flat.items()})


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """NamedShardings for a param tree, same structure."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(params, mesh),
                        is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Batch-first arrays (input_ids, masks, labels, logits) split over data and fsdp."""
    return NamedSharding(mesh, fit_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh.shape))


def tree_shardings(tree: Any, params_sharding: Any, mesh: Mesh) -> Any:
    """Shardings for a tree holding params somewhere inside (a train state, an optimizer state).

    A leaf whose key path ends with a parameter's path (Adam's mu and nu, the params themselves)
    takes that parameter's sharding; every other leaf (step counters, scalars) is replicated.
    """
    by_path = flatten_tree(params_sharding)
    replicated = NamedSharding(mesh, P())

    def pick(key_path: tuple, leaf: Any) -> NamedSharding:
        names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)
        for start in range(len(names)):
            if names[start:] in by_path:
                return by_path[names[start:]]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def constrain(x: jax.Array, *logical_axes: str | None) -> jax.Array:
    """with_sharding_constraint by logical axes under a (data, fsdp, tensor) mesh set with jax.set_mesh.

    A no-op off-mesh, inside pmap, and on meshes without these axes, so the model runs anywhere.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    types = dict(zip(mesh.axis_names, mesh.axis_types))
    if any(types.get(axis) != AxisType.Auto for axis in MESH_AXES):
        return x
    return jax.lax.with_sharding_constraint(x, fit_spec(logical_axes, x.shape, dict(mesh.shape)))
