"""llama-twin generate: prompts from arguments or stdin, streamed replies, the closing stats line."""

from __future__ import annotations

import io
import re

import pytest

from llama_twin.cli import main


@pytest.fixture(scope="module")
def folder(model_folder_with_tokenizer, tmp_path_factory):
    return str(model_folder_with_tokenizer(tmp_path_factory.mktemp("cli") / "model"))


CLOSING = re.compile(r"\[(\d+) tokens, [\d.]+ tok/s, first token after \d+ ms(, compile [\d.]+ s)?\]")


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_prompt_argument_streams_the_greedy_reply(backend, folder, capsys):
    from llama_shared.tokenizers import AutoTokenizer
    from llama_torch import LlamaForCausalLM

    assert main(["generate", "-m", folder, "--backend", backend, "--max-new-tokens", "6", "--greedy",
                 "The quick brown fox"]) == 0
    out, err = capsys.readouterr()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    import torch

    ids = torch.tensor([tokenizer.encode("The quick brown fox")])
    expected = LlamaForCausalLM.from_pretrained(folder).generate(ids, max_new_tokens=6, do_sample=False)
    assert out == tokenizer.decode(expected[0, ids.shape[1]:].tolist(), skip_special_tokens=True) + "\n"
    match = CLOSING.search(err)
    assert match and 1 <= int(match.group(1)) <= 6


def test_prompts_from_stdin_and_chat(folder, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("first prompt\n\nsecond prompt\n"))
    assert main(["generate", "-m", folder, "--backend", "torch", "--max-new-tokens", "4", "--chat",
                 "--do-sample", "--temperature", "0.8", "--top-p", "0.9", "--seed", "1", "--no-stream"]) == 0
    out, err = capsys.readouterr()
    assert len(CLOSING.findall(err)) == 2
    assert out.count("\n") >= 2


def test_bad_sampling_flag_is_a_clear_error(folder, capsys):
    assert main(["generate", "-m", folder, "--backend", "torch", "--do-sample", "--top-p", "1.5", "hi"]) == 1
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_no_model_uses_the_demo_model_or_says_why(capsys, monkeypatch, tmp_path):
    import llama_twin.demo as demo

    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path)
    assert main(["generate", "hello"]) == 1
    assert "demo model" in capsys.readouterr().err


def test_without_max_new_tokens_the_models_generation_config_decides(capsys):
    """The demo model's generation_config.json asks for 48 new tokens; the CLI honours it."""
    import json

    from llama_twin.demo import demo_model_dir

    wanted = json.load(open(f"{demo_model_dir()}/generation_config.json"))["max_new_tokens"]
    assert main(["generate", "--backend", "torch", "--greedy", "--min-new-tokens", str(wanted),
                 "Once upon a time"]) == 0
    match = CLOSING.search(capsys.readouterr().err)
    assert match and int(match.group(1)) == wanted
