"""Where a conversion writes (issue 18): the final rename never replaces what was not there when the
conversion began (without overwrite), a destination that another process creates meanwhile keeps
its files and the error says where the finished output is."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from llama_shared.checkpoints import Checkpoint
from llama_shared.errors import ConversionError
from llama_twin.conversion import convert, registry
from llama_twin.conversion import staging

MAKE_FOLDER_WITH_NOTES = ("import os, sys; os.makedirs(sys.argv[1], exist_ok=True); "
                          "open(os.path.join(sys.argv[1], 'notes.txt'), 'w').write('mine')")


def race_with_another_process(monkeypatch, fmt: str, dst) -> None:
    """Make another process put the user's notes.txt into dst once the writer has finished, before
    the conversion renames its output into place."""
    real = registry.REGISTRY[fmt]

    def write_then_race(source, directory, options):
        real.write(source, directory, options)
        subprocess.run([sys.executable, "-c", MAKE_FOLDER_WITH_NOTES, str(dst)], check=True)

    monkeypatch.setitem(registry.REGISTRY, fmt, dataclasses.replace(real, write=write_then_race))


def assert_same_weights(a, b) -> None:
    a, b = Checkpoint(a), Checkpoint(b)
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        assert (a.get(key) == b.get(key)).all(), key


@pytest.mark.parametrize("empty_at_start", [False, True], ids=["absent", "empty-folder"])
def test_destination_filled_by_another_process_meanwhile_is_left_alone(hf_checkpoint, tmp_path, monkeypatch,
                                                                         empty_at_start):
    src, dst = hf_checkpoint(), tmp_path / "dst"
    if empty_at_start:
        dst.mkdir()
    race_with_another_process(monkeypatch, "hf", dst)
    with pytest.raises(ConversionError, match="appeared while converting") as error:
        convert(src, dst, "hf", progress=False)
    assert sorted(os.listdir(dst)) == ["notes.txt"]
    assert (dst / "notes.txt").read_text() == "mine"
    kept = re.search(r"complete at (\S+)$", str(error.value)).group(1)
    assert os.path.dirname(kept) == str(tmp_path) and not os.path.basename(kept).startswith(".")
    assert_same_weights(src, kept)
    assert sorted(os.listdir(tmp_path)) == sorted(["dst", os.path.basename(kept)])


def test_overwrite_replaces_a_destination_that_appeared_meanwhile(hf_checkpoint, tmp_path, monkeypatch):
    src, dst = hf_checkpoint(), tmp_path / "dst"
    race_with_another_process(monkeypatch, "hf", dst)
    convert(src, dst, "hf", overwrite=True, progress=False)
    assert "notes.txt" not in os.listdir(dst)
    assert_same_weights(src, dst)
    assert os.listdir(tmp_path) == ["dst"]


def test_an_empty_destination_folder_takes_the_output(hf_checkpoint, tmp_path):
    (tmp_path / "dst").mkdir()
    convert(hf_checkpoint(), tmp_path / "dst", "hf", progress=False)
    assert_same_weights(hf_checkpoint(), tmp_path / "dst")
    assert os.listdir(tmp_path) == ["dst"]


@pytest.mark.parametrize("atomic", [True, False], ids=["renameat2", "check-then-rename"])
@pytest.mark.parametrize("occupant", ["folder", "empty-folder", "file"])
def test_rename_no_replace_refuses_any_occupant(tmp_path, monkeypatch, occupant, atomic):
    if atomic and staging._renameat2 is None:
        pytest.skip("this system has no renameat2")
    if not atomic:
        monkeypatch.setattr(staging, "_renameat2", None)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "data").write_text("new")
    taken = tmp_path / "taken"
    if occupant == "file":
        taken.write_text("mine")
    else:
        taken.mkdir()
    if occupant == "folder":
        (taken / "data").write_text("mine")
    before = sorted(os.listdir(taken)) if taken.is_dir() else taken.read_text()
    with pytest.raises(FileExistsError):
        staging.rename_no_replace(str(tmp_path / "new"), str(taken))
    assert (sorted(os.listdir(taken)) if taken.is_dir() else taken.read_text()) == before
    assert (tmp_path / "new" / "data").read_text() == "new"
    staging.rename_no_replace(str(tmp_path / "new"), str(tmp_path / "free"))
    assert (tmp_path / "free" / "data").read_text() == "new"
