"""Where a conversion writes (issue 18): the final rename never replaces what was not there when the
conversion began (without overwrite), a destination that another process creates meanwhile keeps
its files and the error says where the finished output is."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

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


# ------------------------------------------------------------------------------------------------
# Interrupted and killed conversions

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# `llama-twin convert SRC DST --to hf` whose first tensor write waits, after touching argv[3].
STALLED_CONVERT = """
import sys, time
from llama_shared.checkpoints import safetensors

def stalled_write(self, name, array):
    open(sys.argv[3], "w").close()
    time.sleep(300)

safetensors.SafetensorsWriter.write = stalled_write
from llama_twin.cli import main
sys.exit(main(["convert", sys.argv[1], sys.argv[2], "--to", "hf", "--no-progress"]))
"""


def stalled_conversion(src, dst, started):
    """A conversion in another process, stopped inside its first write (its staging folder made)."""
    process = subprocess.Popen([sys.executable, "-c", STALLED_CONVERT, str(src), str(dst), str(started)],
                               cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    for _ in range(1200):
        if started.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    assert started.exists(), process.communicate()
    return process


def staging_folders(parent) -> list[str]:
    return sorted(n for n in os.listdir(parent) if ".partial-" in n)


def test_sigterm_removes_the_staging_folder_at_once(hf_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    process = stalled_conversion(hf_checkpoint(), out / "dst", tmp_path / "started")
    assert len(staging_folders(out)) == 1
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGTERM
    assert os.listdir(out) == []


def test_sigint_removes_the_staging_folder(hf_checkpoint, tmp_path, monkeypatch, request):
    from llama_shared.checkpoints import safetensors

    def interrupted_write(self, name, array):
        assert len(staging_folders(tmp_path)) == 1
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)

    monkeypatch.setattr(safetensors.SafetensorsWriter, "write", interrupted_write)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(KeyboardInterrupt):
        convert(hf_checkpoint(), tmp_path / "dst", "hf", progress=False)
    assert os.listdir(tmp_path) == []


def test_the_next_run_removes_a_killed_runs_staging_folder_and_nothing_else(hf_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    process = stalled_conversion(hf_checkpoint(), out / "dst", tmp_path / "started")
    process.kill()
    process.communicate(timeout=60)
    [killed] = staging_folders(out)
    # Look-alikes that are not provably stale: no marker (not ours), and a marker of a live writer.
    (out / ".dst.partial-notours").mkdir()
    (out / ".dst.partial-notours" / "keep.txt").write_text("mine")
    (out / ".other.partial-running").mkdir()
    staging._mark(str(out / ".other.partial-running"))
    convert(hf_checkpoint(), out / "dst", "hf", progress=False)
    assert killed not in os.listdir(out)
    assert sorted(os.listdir(out)) == [".dst.partial-notours", ".other.partial-running", "dst"]
    assert (out / ".dst.partial-notours" / "keep.txt").read_text() == "mine"
    assert_same_weights(hf_checkpoint(), out / "dst")


def test_a_marker_proves_a_writer_gone_only_on_this_host_and_for_a_dead_or_reused_process_id():
    alive = staging._writer()
    assert not staging._writer_gone(alive)
    assert not staging._writer_gone({**alive, "host": alive["host"] + "-elsewhere", "pid": 2**22 + 1})
    assert staging._writer_gone({**alive, "pid": 2**22 + 1})  # above Linux's largest process id
    if alive["started"] is not None:
        assert staging._writer_gone({**alive, "started": alive["started"] + 1})
    if alive["boot"] is not None:
        assert staging._writer_gone({**alive, "boot": "another-boot"})


# ------------------------------------------------------------------------------------------------
# Writes that fail


@pytest.mark.parametrize("to", ["hf", "meta", "flax"])
def test_a_full_disk_is_a_conversion_error_and_leaves_nothing(hf_checkpoint, tmp_path, to):
    """A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes writes fail as a full disk does."""
    import resource

    src = hf_checkpoint()
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, previous_limit[1]))
    try:
        with pytest.raises(ConversionError, match=r"dst stopped and left nothing behind: \[Errno 27\] File too large"
                                                  r"|consolidated\.00\.pth \(is the disk full\?\)"
                                                  r"|could not write the Orbax checkpoint .* File too large"):
            convert(src, tmp_path / "dst", to, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dst", ["file/dst", "file/sub/dst"])
def test_a_destination_under_a_file(hf_checkpoint, tmp_path, dst):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ConversionError, match="cannot create a staging folder .*: (File exists|Not a directory)"):
        convert(hf_checkpoint(), tmp_path / dst, "hf", progress=False)
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_folder(hf_checkpoint, tmp_path):
    (tmp_path / "locked").mkdir()
    os.chmod(tmp_path / "locked", 0o555)
    try:
        with pytest.raises(ConversionError, match="cannot create a staging folder .* Permission denied"):
            convert(hf_checkpoint(), tmp_path / "locked" / "dst", "hf", progress=False)
    finally:
        os.chmod(tmp_path / "locked", 0o755)
