"""Layer-by-layer parity between implementations of one checkpoint: Flax, torch and transformers.

Each implementation runs the same token ids with output_hidden_states=True (embeddings, each layer's
output, the last one normed, as transformers returns them). The comparison is numpy only: per
layer the max and mean absolute difference and, read out through the checkpoint's final norm and
LM head (the "logit lens"), the next-token KL divergence and top-1 agreement (MaxText's
forward_pass_logit_checker measures, taken at every layer); then the same on the logits, and the
first layer where a pair parts. transformers, the third implementation, is optional.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from llama_shared.checkpoints import Checkpoint
from llama_shared.config import LlamaConfig
from llama_twin.backends import BACKEND_NAMES, get_backend
from llama_twin.distributed import load_torch, torch_parallel

IMPLEMENTATIONS = ("flax", "torch", "transformers")
# Default tolerance on a layer's max abs difference, scaled by max(1, the reference's max |value|):
# float32 is the twins' correctness bar; half precisions allow a few units in their last place.
DEFAULT_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 4e-3}


@dataclass
class Activations:
    """What one implementation computed: hidden states (embeddings ... normed output) and logits, float32."""

    hidden_states: list[np.ndarray]
    logits: np.ndarray


@dataclass
class LayerDiff:
    """One layer of one pair: |difference| of the hidden states and of their next-token readouts."""

    name: str
    max_abs: float
    mean_abs: float
    scale: float  # max(1, max |reference value|): the tolerance is relative to it
    max_kl: float | None = None  # max over positions of KL(reference || other) of next-token distributions
    top1_agreement: float | None = None  # fraction of positions whose most likely next token is the same

    def exceeds(self, tolerance: float) -> bool:
        return not self.max_abs <= tolerance * self.scale  # NaN parts too


@dataclass
class PairReport:
    """One implementation against a reference: per-layer differences and next-token agreement."""

    reference: str
    other: str
    layers: list[LayerDiff]
    logits: LayerDiff
    tolerance: float

    @property
    def first_parting(self) -> LayerDiff | None:
        """The first layer (or the logits) whose difference exceeds the tolerance; None when all agree."""
        return next((d for d in [*self.layers, self.logits] if d.exceeds(self.tolerance)), None)

    @property
    def label(self) -> str:
        return f"{self.reference} vs {self.other}"


@dataclass
class ParityReport:
    pairs: list[PairReport]
    num_tokens: int
    dtype: str
    notes: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return all(pair.first_parting is None for pair in self.pairs)

    def table(self) -> str:
        """One block per pair: a row per layer (then the logits) with max and mean |diff|, the
        next-token KL and top-1 agreement; "!" marks a row past the tolerance. Then the verdicts."""
        lines = [f"{self.num_tokens} tokens, {self.dtype}"]
        for pair in self.pairs:
            lines += ["", f"{pair.label} (tolerance {pair.tolerance:g} x max(1, max |value|))",
                      f"{'layer':<18}{'max |diff|':>13}{'mean |diff|':>13}{'next-token KL':>15}{'top-1':>8}"]
            for diff in [*pair.layers, pair.logits]:
                mark = "!" if diff.exceeds(pair.tolerance) else " "
                kl = "-" if diff.max_kl is None else f"{diff.max_kl:.3e}"
                top1 = "-" if diff.top1_agreement is None else f"{diff.top1_agreement:.0%}"
                lines.append(f"{diff.name:<18}{diff.max_abs:>12.3e}{mark}{diff.mean_abs:>13.3e}{kl:>15}{top1:>8}")
        lines.append("")
        lines.extend(self.verdicts())
        lines.extend(self.notes)
        return "\n".join(lines)

    def verdicts(self) -> list[str]:
        """One line per pair: agreement within tolerance, or the first layer where they part."""
        lines = []
        for pair in self.pairs:
            parting = pair.first_parting
            if parting is None:
                lines.append(f"{pair.label}: agree within tolerance {pair.tolerance:g} at every layer")
            else:
                lines.append(f"{pair.label}: part at {parting.name} (max |diff| {parting.max_abs:.3e} > "
                             f"{pair.tolerance:g} x {parting.scale:.3g})")
        return lines

    def plot(self, path: str | os.PathLike) -> None:
        """Draw each pair's per-layer max and mean |diff| (log scale) with its tolerance into a PNG
        (matplotlib, an optional dependency, is imported here)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(8, 4.5))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        names = [d.name for d in self.pairs[0].layers] + ["logits"]
        x = np.arange(len(names))
        floor = 1e-12  # where exact zeros are drawn on the log axis
        for pair in self.pairs:
            diffs = [*pair.layers, pair.logits]
            line, = axes.plot(x, [max(d.max_abs, floor) for d in diffs], marker="o", label=f"{pair.label} max")
            axes.plot(x, [max(d.mean_abs, floor) for d in diffs], marker=".", linestyle=":", color=line.get_color(),
                      label=f"{pair.label} mean")
            axes.plot(x, [pair.tolerance * d.scale for d in diffs], linestyle="--", color=line.get_color(),
                      alpha=0.4)
        axes.set_yscale("log")
        axes.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        axes.set_ylabel("|difference| (dashed: tolerance; 0 drawn at 1e-12)")
        axes.set_title(f"Per-layer parity, {self.num_tokens} tokens, {self.dtype}")
        axes.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(os.fspath(path), dpi=120)


def layer_names(num_hidden_states: int) -> list[str]:
    """transformers' hidden_states order: embeddings, layer 0 ... layer N-1, the last one after the final norm."""
    layers = num_hidden_states - 1
    return ["embeddings"] + [f"layer {i}" for i in range(layers - 1)] + [f"layer {layers - 1} + norm"]


@dataclass
class Readout:
    """The checkpoint's final RMSNorm and LM head in numpy: any layer's hidden state to next-token
    log-probabilities (the logit lens), one fixed readout for every implementation."""

    norm_weight: np.ndarray
    head: np.ndarray  # (vocab, hidden)
    eps: float

    @classmethod
    def from_checkpoint(cls, model_dir: str | os.PathLike) -> "Readout":
        """model.norm.weight and lm_head.weight (the embeddings when tied) of a Hugging Face folder."""
        config = LlamaConfig.from_pretrained(model_dir)
        checkpoint = Checkpoint(model_dir)
        head = "model.embed_tokens.weight" if "lm_head.weight" not in checkpoint.keys() else "lm_head.weight"
        return cls(checkpoint.get("model.norm.weight").astype(np.float64), checkpoint.get(head).astype(np.float32),
                   config.rms_norm_eps)

    def log_probs(self, hidden: np.ndarray, normed: bool) -> np.ndarray:
        """(positions, vocab) log-probabilities; the last hidden state comes normed already."""
        if not normed:
            h = hidden.astype(np.float64)
            hidden = h / np.sqrt((h * h).mean(-1, keepdims=True) + self.eps) * self.norm_weight
        return _log_softmax(hidden.astype(np.float32) @ self.head.T)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _difference(name: str, reference: np.ndarray, other: np.ndarray,
                log_probs: tuple[np.ndarray, np.ndarray] | None) -> LayerDiff:
    delta = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    diff = LayerDiff(name, float(delta.max()), float(delta.mean()), max(1.0, float(np.abs(reference).max())))
    if log_probs is not None:
        log_p, log_q = log_probs
        diff.max_kl = float((np.exp(log_p) * (log_p - log_q)).sum(axis=-1).max())
        diff.top1_agreement = float((log_p.argmax(-1) == log_q.argmax(-1)).mean())
    return diff


def compare(reference_name: str, reference: Activations, other_name: str, other: Activations,
            tolerance: float, readout: Readout | None = None) -> PairReport:
    """Compare two implementations' activations layer by layer (through the readout, when given, also
    as next-token distributions) and on the logits."""
    if len(reference.hidden_states) != len(other.hidden_states):
        raise ValueError(f"{reference_name} returned {len(reference.hidden_states)} hidden states but "
                         f"{other_name} {len(other.hidden_states)}")
    names = layer_names(len(reference.hidden_states))
    layers = []
    for i, (name, a, b) in enumerate(zip(names, reference.hidden_states, other.hidden_states)):
        normed = i == len(names) - 1
        lens = None if readout is None else (readout.log_probs(a, normed), readout.log_probs(b, normed))
        layers.append(_difference(name, a, b, lens))
    logits = _difference("logits", reference.logits, other.logits,
                         (_log_softmax(reference.logits), _log_softmax(other.logits)))
    return PairReport(reference_name, other_name, layers, logits, tolerance)


def compare_all(activations: dict[str, Activations], dtype: str, tolerance: float | None = None,
                readout: Readout | None = None) -> ParityReport:
    """Every pair of implementations (in the order given: the first is each pair's reference)."""
    if len(activations) < 2:
        raise ValueError(f"parity needs at least two implementations, got {list(activations)}")
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE[dtype]
    names = list(activations)
    pairs = [compare(a, activations[a], b, activations[b], tolerance, readout)
             for i, a in enumerate(names) for b in names[i + 1:]]
    num_tokens = activations[names[0]].logits.shape[-2]
    return ParityReport(pairs, num_tokens, dtype)


# ---- running the implementations --------------------------------------------------------------


def load_model(backend: str, model_dir: str | os.PathLike, dtype: str) -> Any:
    """A causal-LM of the checkpoint in one backend: "flax", "torch" or "transformers" (eager attention)."""
    if backend in BACKEND_NAMES:
        return get_backend(backend).causal_lm.from_pretrained(model_dir, dtype=dtype)
    if backend == "transformers":
        import transformers  # optional: the third implementation, where installed
        from packaging.version import Version

        dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        return transformers.LlamaForCausalLM.from_pretrained(
            model_dir, attn_implementation="eager", **{dtype_key: getattr(torch, dtype)}).eval()
    raise ValueError(f"unknown backend {backend!r}; expected one of {IMPLEMENTATIONS}")


def run_model(model: Any, input_ids: Sequence[int]) -> Activations:
    """Run a Flax, llama_torch or transformers causal-LM on one row of ids; float32 numpy results."""
    backend = get_backend("flax" if hasattr(model, "params") else "torch")
    ids = backend.from_numpy(np.asarray(input_ids, dtype=np.int64)[None])
    if backend.name == "torch":
        ids = ids.to(model.device)  # a sharded torch twin computes on its rank's GPU
    with backend.inference():
        out = model(ids, output_hidden_states=True)
    to_numpy = lambda x: backend.to_numpy(x)[0].astype(np.float32)  # noqa: E731
    return Activations([to_numpy(h) for h in out.hidden_states], to_numpy(out.logits))


def available_backends() -> list[str]:
    """flax and torch always (they are this package); transformers where it is installed."""
    return [*BACKEND_NAMES, *(["transformers"] if importlib.util.find_spec("transformers") else [])]


def parity_report(model_dir: str | os.PathLike, input_ids: Sequence[int], dtype: str = "float32",
                  tolerance: float | None = None, backends: Sequence[str] | None = None,
                  models: dict[str, Any] | None = None,
                  activations: dict[str, Activations] | None = None) -> ParityReport:
    """Load the checkpoint in each backend (or use the given model objects), run the ids, compare all
    pairs; the checkpoint's final norm and head read every layer out as next-token distributions.

    ``models`` maps a name to an already-built model (e.g. one with edited weights, or one sharded
    over a mesh); those run instead of loading that backend. ``activations`` maps a name to what an
    implementation computed elsewhere (the torch twin over several processes), compared as given.
    Names that are not backends come first, then the backends in order.
    """
    if dtype not in DEFAULT_TOLERANCE:
        raise ValueError(f"dtype must be one of {sorted(DEFAULT_TOLERANCE)}, got {dtype!r}")
    models, given = dict(models or {}), dict(activations or {})
    backends = list(backends or available_backends())
    order = [name for name in [*models, *given] if name not in backends] + backends
    computed = {}
    for name in order:
        if name not in given and name not in models:
            models[name] = load_model(name, model_dir, dtype)
        computed[name] = given[name] if name in given else run_model(models[name], input_ids)
    return compare_all(computed, dtype, tolerance, Readout.from_checkpoint(model_dir))


# ---- the torch twin over several processes ------------------------------------------------------


def torch_activations_on_ranks(model_dir: str, input_ids: Sequence[int], dtype: str,
                               mesh_sizes: tuple[int, int, int], out_file: str) -> None:
    """On every rank of a torch job: run the torch twin sharded over the job's mesh; rank 0 writes
    the activations to out_file (read back with load_activations)."""
    torch_parallel().check_same_settings({"input_ids": list(input_ids), "dtype": dtype, "mesh": tuple(mesh_sizes)})
    activations = run_model(load_torch(model_dir, mesh_sizes, dtype), input_ids)
    if dist.get_rank() == 0:
        np.savez(out_file, logits=activations.logits, *activations.hidden_states)


def load_activations(path: str | os.PathLike) -> Activations:
    """Activations written by torch_activations_on_ranks."""
    with np.load(path) as saved:
        hidden = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
        return Activations(hidden, saved["logits"])
