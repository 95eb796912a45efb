"""AttentionMaskVisualizer: transformers' token-by-token attention grid, drawn from llama_shared.masks.

For one text it shows the causal triangle; for several texts the padded batch (left or right
padding), one grid per row with the padding marked; a custom 4-D mask is drawn as given. The
cells come from the same mask functions both backends run, so the picture is what the models do.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from llama_shared.config import LlamaConfig
from llama_shared.masks import attention_allowed, custom_mask_allowed
from llama_shared.tokenizers import AutoTokenizer

ATTENDED = "■"
MASKED = "⬚"
DIAGONAL_PLAIN = "◆"  # the diagonal without colour
GREEN = "\033[92m"
YELLOW = "\033[93m"
RESET = "\033[0m"
PAD_TOKEN_LABEL = "<pad>"


@dataclass
class MaskView:
    """What one visualisation shows: per row of the batch, token labels, the allowed grid and padding."""

    tokens: list[list[str]]  # batch × positions; padding positions hold the pad label
    allowed: np.ndarray  # (batch, queries, keys) bool
    padding: np.ndarray  # (batch, positions) bool, True where the position is padding
    title: str = ""


def causal_view(tokens: Sequence[Sequence[str]], padding: np.ndarray, title: str = "") -> MaskView:
    """The mask both backends build for a (padded) batch with no cache: causal plus key padding."""
    padding = np.asarray(padding, dtype=bool)
    n = padding.shape[1]
    slots = np.arange(n)
    allowed = attention_allowed(slots, slots, ~padding)[:, 0]
    return MaskView([list(row) for row in tokens], allowed, padding, title)


def custom_view(tokens: Sequence[Sequence[str]], padding: np.ndarray, mask: Any, title: str = "") -> MaskView:
    """A user's 4-D mask (batch or 1, 1, queries, keys), bool or additive float, as the models read it."""
    mask = np.asarray(mask)
    padding = np.asarray(padding, dtype=bool)
    batch, n = padding.shape
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != (n, n) or mask.shape[0] not in (1, batch):
        batches = "1" if batch == 1 else f"{batch} or 1"
        raise ValueError(f"a custom attention mask must have shape ({batches}, 1, {n}, {n}) for {n} tokens, "
                         f"got {tuple(mask.shape)}")
    allowed = np.broadcast_to(custom_mask_allowed(mask), (batch, 1, n, n))[:, 0]
    return MaskView([list(row) for row in tokens], allowed, padding, title)


def render_grid(tokens: Sequence[str], allowed: np.ndarray, padding: np.ndarray, color: bool = False) -> str:
    """One sequence's grid as transformers prints it: a row per query, a column per key, the diagonal marked."""
    n = len(tokens)
    diagonal = f"{GREEN}{ATTENDED}{RESET}" if color else DIAGONAL_PLAIN
    labels = [repr(token) + (" pad" if padding[i] else "") for i, token in enumerate(tokens)]
    width = max(len(label) for label in labels)
    digits = len(str(n - 1))
    lines = []
    for d in range(digits):
        header = " ".join(str(j).rjust(digits)[d] for j in range(n))
        lines.append(" " * (width + digits + 3) + header)
    for i, label in enumerate(labels):
        cells = " ".join(MASKED if not allowed[i, j] else diagonal if i == j else ATTENDED for j in range(n))
        if color and padding[i]:
            label = f"{YELLOW}{label.ljust(width)}{RESET}"
        lines.append(f"{label.ljust(width)}: {str(i).rjust(digits)} {cells}")
    return "\n".join(lines)


def render_view(view: MaskView, color: bool = False) -> str:
    """All grids of a view with a legend, one block per row of the batch."""
    diagonal = f"{GREEN}{ATTENDED}{RESET}" if color else DIAGONAL_PLAIN
    legend = f"{ATTENDED}: attended   {MASKED}: masked   {diagonal}: i == j (diagonal)"
    if view.padding.any():
        legend += "   pad: padding position (masked as a key)"
    blocks = [view.title] if view.title else []
    blocks.append(legend)
    batch = len(view.tokens)
    for b in range(batch):
        heading = f"sequence {b}" + (f" ({int(view.padding[b].sum())} padding)" if view.padding[b].any() else "")
        grid = render_grid(view.tokens[b], view.allowed[b], view.padding[b], color)
        blocks.append(grid if batch == 1 else f"{heading}\n{grid}")
    return "\n\n".join(blocks)


def save_view_png(view: MaskView, path: str | os.PathLike) -> None:
    """Draw each row's grid as an image into a PNG file: attended, masked, the diagonal and, tinted,
    masked cells whose key is padding."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    batch, n = view.padding.shape
    figure = Figure(figsize=(max(4.0, 0.35 * n + 2.5) * batch, max(3.5, 0.35 * n + 2.0)))
    FigureCanvasAgg(figure)
    colours = ListedColormap(["#f2f2f2", "#3b5b92", "#2ca02c", "#f0b27a"])  # masked, attended, diagonal, pad key
    for b in range(batch):
        cells = view.allowed[b].astype(int)
        cells[np.diag_indices(n)] *= 2
        cells[(cells == 0) & view.padding[b][None, :]] = 3
        axes = figure.add_subplot(1, batch, b + 1)
        axes.imshow(cells, cmap=colours, vmin=0, vmax=3)
        labels = [token + (" (pad)" if view.padding[b, i] else "") for i, token in enumerate(view.tokens[b])]
        axes.set_xticks(range(n), labels, rotation=90, fontsize=8)
        axes.set_yticks(range(n), labels, fontsize=8)
        axes.set_xlabel("key")
        axes.set_ylabel("query")
        axes.set_title(f"sequence {b}" if batch > 1 else (view.title or "attention mask"), fontsize=9)
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=120)


class AttentionMaskVisualizer:
    """Print the attention mask a Llama model applies to a text, as transformers' visualizer does.

    ``AttentionMaskVisualizer(model_dir)("Plants create energy")`` prints the causal grid; a list of
    texts prints the padded batch (``padding_side`` left or right); ``attention_mask=`` a 4-D mask
    (batch, 1, tokens, tokens) prints that mask. No weights are loaded: the config and tokenizer suffice.
    """

    def __init__(self, model: str | os.PathLike | LlamaConfig | Any, tokenizer: Any = None):
        if isinstance(model, (str, os.PathLike)):
            self.name = os.fspath(model)
            self.config = LlamaConfig.from_pretrained(model)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(model)
        else:
            self.config = model if isinstance(model, LlamaConfig) else model.config
            self.name = type(model).__name__
        if tokenizer is None:
            raise ValueError("AttentionMaskVisualizer needs a tokenizer when given a config or model object; "
                             "pass tokenizer=, or a model folder that holds tokenizer files")
        self.tokenizer = tokenizer

    def view(self, text: str | Sequence[str], padding_side: str | None = None,
             attention_mask: Any = None) -> MaskView:
        """The tokens and mask for a text (causal), several texts (padded batch) or a custom 4-D mask."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("give at least one text to visualise")
        rows = [self.tokenizer.convert_ids_to_tokens(self.tokenizer.encode(t)) for t in texts]
        side = padding_side or getattr(self.tokenizer, "padding_side", "right")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        length = max(len(row) for row in rows)
        pad_label = getattr(self.tokenizer, "pad_token", None) or PAD_TOKEN_LABEL
        tokens, padding = [], np.zeros((len(rows), length), dtype=bool)
        for b, row in enumerate(rows):
            fill = length - len(row)
            tokens.append([pad_label] * fill + row if side == "left" else row + [pad_label] * fill)
            padding[b] = np.arange(length) < fill if side == "left" else np.arange(length) >= len(row)
        title = f"Attention mask for {self.name} ({self.config.num_hidden_layers} layers)"
        if padding.any():
            title += f", {side}-padded batch"
        if attention_mask is not None:
            return custom_view(tokens, padding, attention_mask, title + ", custom 4-D mask")
        return causal_view(tokens, padding, title)

    def render(self, text: str | Sequence[str], padding_side: str | None = None, attention_mask: Any = None,
               color: bool = False) -> str:
        """The grid(s) as text."""
        return render_view(self.view(text, padding_side, attention_mask), color)

    def save_png(self, path: str | os.PathLike, text: str | Sequence[str], padding_side: str | None = None,
                 attention_mask: Any = None) -> None:
        """Draw the grid(s) into a PNG file (matplotlib, imported only here)."""
        save_view_png(self.view(text, padding_side, attention_mask), path)

    def __call__(self, text: str | Sequence[str], padding_side: str | None = None,
                 attention_mask: Any = None) -> None:
        """Print the grid(s), coloured when standard output is a terminal."""
        print(self.render(text, padding_side, attention_mask, color=sys.stdout.isatty()))
