"""Sliding-window perplexity equals transformers' documented recipe (relative 1e-5) in both twins
and on the command line; windows and strides that cannot work are refused."""

from __future__ import annotations

import pytest
import torch
import transformers

from llama_flax import FlaxLlamaForCausalLM
from llama_shared.errors import InputError
from llama_shared.tokenizers import AutoTokenizer
from llama_torch import LlamaForCausalLM
from llama_twin.cli import main
from llama_twin.evaluation import perplexity, text_perplexity

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. ") * 3


def transformers_recipe(model, input_ids: torch.Tensor, max_length: int, stride: int) -> float:
    """transformers' docs, "Perplexity of fixed-length models", line for line."""
    seq_len = input_ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        window = input_ids[:, begin_loc:end_loc]
        target_ids = window.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            neg_log_likelihood = model(window, labels=target_ids).loss
        num_loss_tokens = (target_ids != -100).sum().item() - target_ids.size(0)
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return float(torch.exp(nll_sum / n_tokens))


@pytest.fixture(scope="module")
def three_models(eval_model_dir):
    return (transformers.LlamaForCausalLM.from_pretrained(eval_model_dir).eval(),
            LlamaForCausalLM.from_pretrained(eval_model_dir), FlaxLlamaForCausalLM.from_pretrained(eval_model_dir))


@pytest.mark.parametrize("max_length, stride", [(32, 16), (48, 48), (40, 7)])
def test_perplexity_equals_the_transformers_recipe_in_both_twins(three_models, eval_model_dir, max_length, stride):
    hf, torch_twin, flax_twin = three_models
    ids = AutoTokenizer.from_pretrained(eval_model_dir).encode(TEXT)
    assert len(ids) > 2 * max_length
    expected = transformers_recipe(hf, torch.tensor([ids]), max_length, stride)
    for model in (torch_twin, flax_twin):
        result = perplexity(model, ids, max_length, stride)
        assert abs(result.perplexity - expected) / expected <= 1e-5
        assert result.tokens == len(ids)


def test_text_perplexity_encodes_with_the_tokenizer(three_models, eval_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(eval_model_dir)
    _, torch_twin, _ = three_models
    expected = perplexity(torch_twin, tokenizer.encode(TEXT), 32, 16)
    assert text_perplexity(torch_twin, tokenizer, TEXT, 32, 16) == expected


def test_bad_windows_and_strides_are_refused(three_models):
    _, torch_twin, _ = three_models
    ids = list(range(3, 60))
    with pytest.raises(InputError, match="stride 40 must be between 1 and the window max_length=32"):
        perplexity(torch_twin, ids, 32, 40)
    with pytest.raises(InputError, match="max_length .* at least 2"):
        perplexity(torch_twin, ids, 1)
    with pytest.raises(InputError, match="at least 2"):
        perplexity(torch_twin, [5])


def test_the_command_line_prints_the_same_perplexity(three_models, eval_model_dir, tmp_path, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT)
    _, torch_twin, _ = three_models
    expected = perplexity(torch_twin, AutoTokenizer.from_pretrained(eval_model_dir).encode(TEXT), 32, 16)
    for backend in ("torch", "flax"):
        assert main(["perplexity", str(eval_model_dir), str(text_file), "--max-length", "32", "--stride", "16",
                     "--backend", backend]) == 0
        out = capsys.readouterr().out
        assert f"perplexity {expected.perplexity:.4f}" in out
        assert f"tokens {expected.tokens}" in out


def test_the_command_line_names_a_stride_larger_than_the_window(eval_model_dir, tmp_path, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT)
    assert main(["perplexity", str(eval_model_dir), str(text_file), "--max-length", "16", "--stride", "32"]) == 2
    assert "stride 32 must be between 1 and the window max_length=16" in capsys.readouterr().err
