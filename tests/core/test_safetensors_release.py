"""SafetensorsFile.release: the mapped pages of a tensor leave the process's resident memory, so a
rank that copies its block out of every tensor (llama_torch.parallel) holds only its blocks."""

import mmap
import os

import numpy as np
import pytest

from llama_shared.checkpoints import Checkpoint, SafetensorsFile, save_tensors

pytestmark = pytest.mark.skipif(not (hasattr(mmap, "MADV_DONTNEED") and os.path.exists("/proc/self/smaps")),
                                reason="needs madvise and /proc/self/smaps (Linux)")


def mapped_resident_kb(path: str) -> int:
    """Resident kB of this process's mappings of path, from /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = len(fields) >= 6 and fields[5] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def test_release_drops_the_mapped_pages_and_the_values_stay(tmp_path):
    tensors = {"a": np.arange(300_000, dtype=np.float32), "b": np.ones((512, 512), np.float32)}
    save_tensors(tmp_path, tensors)
    checkpoint = Checkpoint(tmp_path)
    path = os.path.realpath(tmp_path / "model.safetensors")
    a, b = checkpoint.get("a"), checkpoint.get("b")
    assert float(a.sum()) == float(tensors["a"].sum()) and float(b.sum()) == 512 * 512
    touched = mapped_resident_kb(path)
    assert touched >= (tensors["a"].nbytes + tensors["b"].nbytes) // 1024 - 8
    checkpoint.release("a")
    assert mapped_resident_kb(path) <= touched - tensors["a"].nbytes // 1024 + 8
    checkpoint.release("b")
    assert mapped_resident_kb(path) <= 8  # at most the pages shared with the header
    np.testing.assert_array_equal(a, tensors["a"])  # read back from the page cache on use


def test_release_before_any_get_is_a_no_op(tmp_path):
    save_tensors(tmp_path, {"a": np.zeros(4, np.float32)})
    SafetensorsFile(tmp_path / "model.safetensors").release("a")
