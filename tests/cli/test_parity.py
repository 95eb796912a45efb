"""`llama-twin parity` and llama_twin.parity: an intact checkpoint agrees in Flax, torch and
transformers; a model with one layer's weights edited is named at that layer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llama_twin.cli import main as cli_main
from llama_twin.parity import Activations, compare, compare_all, parity_report

LAYERS = 4
IDS = [1, 17, 42, 99, 5, 63, 120, 7, 88, 31, 2, 54]


@pytest.fixture(scope="module")
def checkpoint(hf_checkpoint):
    return hf_checkpoint(num_hidden_layers=LAYERS)


@pytest.fixture(scope="module")
def intact_report(checkpoint):
    return parity_report(checkpoint, IDS)


def test_intact_checkpoint_agrees_in_every_implementation(intact_report):
    assert [pair.label for pair in intact_report.pairs] == [
        "flax vs torch", "flax vs transformers", "torch vs transformers"]
    assert intact_report.agrees
    for pair in intact_report.pairs:
        assert [d.name for d in pair.layers] == ["embeddings", "layer 0", "layer 1", "layer 2", "layer 3 + norm"]
        assert max(d.max_abs for d in pair.layers) < 1e-4
        for diff in [*pair.layers, pair.logits]:
            assert diff.max_kl < 1e-8, diff
            assert diff.top1_agreement == 1.0, diff
    table = intact_report.table()
    assert "flax vs torch: agree within tolerance 0.0001 at every layer" in table
    assert "!" not in table


@pytest.mark.parametrize("edited_layer", [0, 2])
def test_a_model_with_one_layer_edited_is_named_at_that_layer(checkpoint, edited_layer):
    import torch

    from llama_torch import LlamaForCausalLM

    edited = LlamaForCausalLM.from_pretrained(checkpoint)
    weight = edited.model.layers[edited_layer].mlp.down_proj.weight
    with torch.no_grad():
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    report = parity_report(checkpoint, IDS, backends=["flax", "transformers"], models={"edited torch": edited})
    verdicts = dict(line.split(": ", 1) for line in report.verdicts())
    assert verdicts["flax vs transformers"].startswith("agree")
    for label in ("edited torch vs flax", "edited torch vs transformers"):
        assert verdicts[label].startswith(f"part at layer {edited_layer} ("), verdicts[label]
    assert not report.agrees
    lens = report.pairs[0].layers  # edited torch vs flax, read out through the final norm and head
    assert all(diff.max_kl < 1e-10 for diff in lens[:edited_layer + 1])
    assert lens[edited_layer + 1].max_kl > 1e-6


def test_compare_finds_the_first_parting_layer_and_the_kl():
    rng = np.random.default_rng(0)
    hidden = [rng.normal(size=(3, 8)).astype(np.float32) for _ in range(4)]
    logits = np.log(np.array([[0.4, 0.6], [0.9, 0.1], [0.2, 0.8]], dtype=np.float32))
    other_logits = np.log(np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]], dtype=np.float32))
    shifted = [h.copy() for h in hidden]
    shifted[2][1, 3] += 5e-3
    shifted[3][0, 0] = np.nan
    pair = compare("a", Activations(hidden, logits), "b", Activations(shifted, other_logits), tolerance=1e-4)
    assert pair.first_parting.name == "layer 1"
    assert pair.layers[0].max_kl is None, "without a readout the layers have no next-token measures"
    assert pair.layers[1].max_abs == 0.0
    assert pair.layers[2].max_abs == pytest.approx(5e-3, rel=1e-3)
    assert pair.layers[3].exceeds(1e-4), "a NaN must count as parting"
    assert pair.logits.max_kl == pytest.approx(0.4 * math.log(0.4 / 0.9) + 0.6 * math.log(0.6 / 0.1), rel=1e-5)
    assert pair.logits.top1_agreement == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least two"):
        compare_all({"a": Activations(hidden, logits)}, "float32")


def test_tolerance_scales_with_the_reference_magnitude():
    big = [np.full((2, 4), 1000.0, np.float32)] * 3
    nudged = [b + 0.05 for b in big]
    logits = np.zeros((2, 5), np.float32)
    pair = compare("a", Activations(big, logits), "b", Activations(nudged, logits), tolerance=1e-4)
    assert pair.first_parting is None  # 0.05 <= 1e-4 * 1000
    pair = compare("a", Activations(big, logits), "b", Activations(nudged, logits), tolerance=1e-5)
    assert pair.first_parting.name == "embeddings"


@pytest.mark.slow
def test_bfloat16_checkpoint_agrees_within_the_default_tolerance(checkpoint):
    report = parity_report(checkpoint, IDS, dtype="bfloat16")
    assert report.agrees, report.table()
    assert all(pair.logits.top1_agreement >= 0.9 for pair in report.pairs)


def test_cli_prints_the_table_writes_the_plot_and_exits_zero(checkpoint, tmp_path, capsys):
    png = tmp_path / "parity.png"
    assert cli_main(["parity", checkpoint, "--backends", "flax", "torch", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "layer 3 + norm" in out and "next-token KL" in out and "top-1" in out
    assert "flax vs torch: agree within tolerance" in out
    assert "no tokenizer" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["parity", checkpoint, "--backends", "flax", "torch", "--tolerance", "1e-12"]) == 1
    assert "flax vs torch: part at layer 0" in capsys.readouterr().out


@pytest.mark.parametrize("tied", [False, True])
def test_readout_matches_transformers_final_norm_and_head(hf_checkpoint, tied):
    import torch
    import transformers

    from llama_twin.parity import Readout

    folder = hf_checkpoint(tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(torch.tensor([IDS]), output_hidden_states=True)
        middle = out.hidden_states[1]
        expected_middle = torch.log_softmax(model.lm_head(model.model.norm(middle)).double(), -1)[0].numpy()
    readout = Readout.from_checkpoint(folder)
    np.testing.assert_allclose(readout.log_probs(middle[0].numpy(), normed=False), expected_middle, atol=1e-5)
    expected_last = torch.log_softmax(out.logits.double(), -1)[0].numpy()
    np.testing.assert_allclose(readout.log_probs(out.hidden_states[-1][0].numpy(), normed=True), expected_last,
                               atol=1e-5)
