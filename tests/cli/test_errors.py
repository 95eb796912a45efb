"""How the command line answers bad input (issue 18): one line on stderr naming what is wrong, exit
status 1, no traceback unless --debug (given before or after the subcommand)."""

from __future__ import annotations

import pytest

from llama_shared.errors import CheckpointError, GenerationError
from llama_twin.cli import main, mask


def one_error_line(capsys, command: str) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llama-twin {command}: "), err
    return lines[0]


def test_a_project_error_is_one_line_and_status_1(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "hf"]) == 1
    assert "missing is not a folder" in one_error_line(capsys, "convert")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, where):
    arguments = ["convert", str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "hf"]
    arguments = ["--debug", *arguments] if where == "before" else [*arguments, "--debug"]
    with pytest.raises(CheckpointError, match="is not a folder"):
        main(arguments)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_new_tokens_zero_or_negative_is_an_error(value, capsys):
    """--max-new-tokens 0 used to mean the default of 256 (transformers refuses max_new_tokens <= 0)."""
    assert main(["generate", "--backend", "torch", "--max-new-tokens", value, "hello"]) == 1
    assert f"max_new_tokens must be an integer >= 1, got {value}" in one_error_line(capsys, "generate")


def test_an_unexpected_exception_is_one_line_too(monkeypatch, capsys):
    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(mask, "run", broken)
    assert main(["mask", "hello"]) == 1
    assert "internal error KeyError" in one_error_line(capsys, "mask")
    with pytest.raises(KeyError):
        main(["mask", "hello", "--debug"])


def test_an_error_message_over_several_lines_prints_as_one(monkeypatch, capsys):
    def failing(args):
        raise GenerationError("first line\nsecond line")

    monkeypatch.setattr(mask, "run", failing)
    assert main(["mask", "hello"]) == 1
    assert one_error_line(capsys, "mask").endswith("error: first line second line")
