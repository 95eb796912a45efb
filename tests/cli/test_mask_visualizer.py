"""AttentionMaskVisualizer and `llama-twin mask`: the grid has a row and a column per token, the causal
triangle, the diagonal marked, padding shown for padded batches, and custom 4-D masks drawn as given."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from llama_twin.cli import main as cli_main
from llama_shared.config import LlamaConfig
from llama_twin.mask_visualizer import ATTENDED, DIAGONAL_PLAIN, MASKED, AttentionMaskVisualizer
from llama_shared.tokenizers import AutoTokenizer

PROMPT = "Plants create energy through a process known as"
ROW = re.compile(r"^(?P<label>.*): +(?P<index>\d+) (?P<cells>[■⬚◆ ]+)$")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained_spm_path):
    """A model folder with config.json and a sentencepiece tokenizer (no weights: none are needed)."""
    directory = tmp_path_factory.mktemp("mask_model")
    LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4).save_pretrained(directory)
    (directory / "tokenizer.model").write_bytes(trained_spm_path.read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "pad_token": "<unk>", "add_bos_token": True, "padding_side": "left"}))
    return directory


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def parse_grids(text: str) -> list[tuple[list[str], np.ndarray]]:
    """Each printed grid as (row labels, cells) with cells 0 masked, 1 attended, 2 diagonal."""
    grids, labels, cells = [], [], []
    for line in text.splitlines() + [""]:
        match = ROW.match(line)
        if match:
            assert int(match["index"]) == len(labels), line
            labels.append(match["label"].rstrip())
            cells.append([{MASKED: 0, ATTENDED: 1, DIAGONAL_PLAIN: 2}[c] for c in match["cells"].split(" ")])
        elif labels:
            grids.append((labels, np.array(cells)))
            labels, cells = [], []
    return grids


def expected_cells(real_keys: np.ndarray) -> np.ndarray:
    """Causal triangle over the real keys, the attended diagonal marked 2 (written out independently)."""
    n = len(real_keys)
    cells = np.zeros((n, n), dtype=int)
    for i in range(n):
        for j in range(i + 1):
            if real_keys[j]:
                cells[i, j] = 2 if i == j else 1
    return cells


def test_prompt_grid_has_a_row_and_column_per_token_and_the_causal_triangle(model_dir, tokenizer):
    ids = tokenizer.encode(PROMPT)
    text = AttentionMaskVisualizer(model_dir).render(PROMPT)
    [(labels, cells)] = parse_grids(text)
    assert labels == [repr(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    assert cells.shape == (len(ids), len(ids))
    np.testing.assert_array_equal(cells, expected_cells(np.ones(len(ids), bool)))
    assert "diagonal" in text


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_shows_the_padding(model_dir, tokenizer, side):
    texts = ["Plants create energy", PROMPT]
    lengths = [len(tokenizer.encode(t)) for t in texts]
    n = max(lengths)
    text = AttentionMaskVisualizer(model_dir).render(texts, padding_side=side)
    assert f"{side}-padded batch" in text
    grids = parse_grids(text)
    assert [cells.shape for _, cells in grids] == [(n, n), (n, n)]
    for (labels, cells), length in zip(grids, lengths):
        real = np.arange(n) >= n - length if side == "left" else np.arange(n) < length
        assert [label.endswith(" pad") for label in labels] == list(~real)
        assert all(label.startswith("'<unk>'") for label, is_real in zip(labels, real) if not is_real)
        assert not cells[:, ~real].any(), "a padding key must be masked for every query"
        np.testing.assert_array_equal(cells[real], expected_cells(real)[real])


def test_custom_4d_masks_are_drawn_as_given(model_dir, tokenizer):
    n = len(tokenizer.encode(PROMPT))
    allowed = np.zeros((1, 1, n, n), dtype=bool)
    half = n // 2
    for i in range(n):  # two packed documents: each attends only within itself, causally
        start = 0 if i < half else half
        allowed[0, 0, i, start:i + 1] = True
    visualizer = AttentionMaskVisualizer(model_dir)
    for mask in (allowed, np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)):
        [(_, cells)] = parse_grids(visualizer.render(PROMPT, attention_mask=mask))
        np.testing.assert_array_equal(cells > 0, allowed[0, 0])
        np.testing.assert_array_equal(np.diag(cells), np.full(n, 2))
    with pytest.raises(ValueError, match=rf"\(1, 1, {n}, {n}\).*got \(1, 1, {n - 1}, {n - 1}\)"):
        visualizer.render(PROMPT, attention_mask=allowed[..., 1:, 1:])


def test_config_object_with_a_tokenizer_and_without_one(tokenizer):
    config = LlamaConfig(num_hidden_layers=3)
    text = AttentionMaskVisualizer(config, tokenizer).render("Plants")
    assert "3 layers" in text
    with pytest.raises(ValueError, match="needs a tokenizer"):
        AttentionMaskVisualizer(config)


def test_cli_prints_the_grid_and_writes_a_png(model_dir, tokenizer, tmp_path, capsys):
    png = tmp_path / "mask.png"
    assert cli_main(["mask", PROMPT, "--model", str(model_dir), "--png", str(png), "--no-color"]) == 0
    out = capsys.readouterr().out
    [(labels, cells)] = parse_grids(out)
    assert len(labels) == len(tokenizer.encode(PROMPT))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["mask", "Plants create", PROMPT, "--model", str(model_dir), "--padding-side", "right",
                     "--no-color"]) == 0
    assert len(parse_grids(capsys.readouterr().out)) == 2
