"""Scanned and unrolled param trees, converted into each other bit for bit.

A model with scan_layers=True keeps its decoder layers' params stacked along a leading layer axis
under layers/scan (model/layers/scan/self_attn/q_proj/kernel has shape (layers, in, out)); an
unrolled one keeps them per layer under layers/0, layers/1, ... (transformers' Flax paths, the
layout of every checkpoint on disk). Loading stacks, saving unstacks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from llama_shared.naming import flatten_tree, unflatten_tree

SCAN = "scan"  # the module name of the scanned layers under "layers"


def stacked_at(path: tuple[str, ...]) -> int | None:
    """Index of "layers" in a scanned param's path (layers/scan/...), None for any other path."""
    for i in range(len(path) - 1):
        if path[i] == "layers" and path[i + 1] == SCAN:
            return i
    return None


def layer_at(path: tuple[str, ...]) -> tuple[int, int] | None:
    """(index of "layers", layer number) in an unrolled layer param's path (layers/3/...), else None."""
    for i in range(len(path) - 1):
        if path[i] == "layers" and path[i + 1].isdigit():
            return i, int(path[i + 1])
    return None


def stack_layers(params: Any) -> Any:
    """The scanned tree of an unrolled one: each layer param stacked over the layers, in layer order."""
    return unflatten_tree(stack_flat(dict(flatten_tree(params))))


def stack_flat(flat: dict[tuple[str, ...], Any]) -> dict[tuple[str, ...], Any]:
    """stack_layers on a flat {path: leaf} dict that it empties as it goes, so that a loader holds
    each group of per-layer arrays and its stack together, never the whole model twice."""
    groups: dict[tuple[str, ...], dict[int, tuple[str, ...]]] = {}
    out = {}
    for path in list(flat):
        found = layer_at(path)
        if found is None:
            out[path] = flat.pop(path)
            continue
        at, layer = found
        groups.setdefault((*path[:at + 1], SCAN, *path[at + 2:]), {})[layer] = path
    for stacked_path, layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"{'/'.join(stacked_path)}: layers {sorted(layers)} are not 0..{len(layers) - 1}")
        out[stacked_path] = jnp.stack([flat.pop(layers[i]) for i in range(len(layers))])
    return out


def unstack_layers(params: Any) -> Any:
    """The unrolled tree of a scanned one (each layer's params a slice of the stack)."""
    return unflatten_tree({path: array[index] if index is not None else array
                           for path, (array, index) in unrolled_leaves(params).items()})


def unrolled_leaves(params: Any) -> dict[tuple[str, ...], tuple[jax.Array, int | None]]:
    """{unrolled path: (leaf, layer index into it or None)}: the unrolled layout without copying the
    stacks (a saver slices one layer at a time)."""
    leaves = {}
    for path, leaf in flatten_tree(params).items():
        at = stacked_at(path)
        if at is None:
            leaves[path] = (leaf, None)
            continue
        for layer in range(leaf.shape[0]):
            leaves[(*path[:at + 1], str(layer), *path[at + 2:])] = (leaf, layer)
    return leaves
