"""A conversion's single pass keeps the page cache small: what it reads is dropped once copied,
what it writes goes to disk a few pieces behind and is dropped (llama_shared.checkpoints.pagecache)."""

import ctypes
import errno
import os

import numpy as np
import pytest

from llama_shared.checkpoints import pagecache

PIECE = 4096


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of one page and a window of two, so that a few KB exercise the whole pipeline."""
    monkeypatch.setattr(pagecache, "PIECE", PIECE)
    monkeypatch.setattr(pagecache, "WRITE_WINDOW", 2 * PIECE)
    drops: list[tuple[int, int]] = []
    real_drop = pagecache.drop_cached
    monkeypatch.setattr(pagecache, "drop_cached", lambda fd, offset=0, length=0: (drops.append((offset, length)),
                                                                                 real_drop(fd, offset, length)))
    return drops


def covered(ranges: list[tuple[int, int]]) -> set[int]:
    return {byte for offset, length in ranges for byte in range(offset, offset + length)}


def test_read_into_reads_every_byte_and_drops_each_piece_once_read(tmp_path, small_pieces):
    data = np.random.default_rng(0).integers(0, 256, 5 * PIECE + 123, dtype=np.uint8)
    path = tmp_path / "data.bin"
    path.write_bytes(data.tobytes())
    buffer = np.zeros(3 * PIECE + 7, np.uint8)
    with open(path, "rb", buffering=0) as f:
        assert pagecache.read_into(f, memoryview(buffer), 1000) == len(buffer)
        assert pagecache.read_into(f, memoryview(np.zeros(2 * PIECE, np.uint8)), 4 * PIECE) == PIECE + 123
    assert np.array_equal(buffer, data[1000:1000 + len(buffer)])
    assert max(length for _, length in small_pieces) <= PIECE
    assert covered(small_pieces) == set(range(1000, 1000 + len(buffer))) | set(range(4 * PIECE, 5 * PIECE + 123))


@pytest.mark.skipif(pagecache._sync_file_range is None, reason="no sync_file_range (not Linux)")
def test_write_behind_writes_every_byte_and_drops_it_a_window_behind(tmp_path, small_pieces, monkeypatch):
    synced: list[tuple[int, int, int]] = []
    real_sync = pagecache._sync_file_range

    def recorded_sync(fd, offset, length, flags):
        synced.append((offset, length, flags))
        return real_sync(fd, offset, length, flags)

    monkeypatch.setattr(pagecache, "_sync_file_range", recorded_sync)
    data = np.random.default_rng(1).integers(0, 256, 7 * PIECE + 5, dtype=np.uint8)
    path = tmp_path / "out.bin"
    with open(path, "wb", buffering=0) as f:
        writer = pagecache.WriteBehind(f, str(path))
        writer.write(100, memoryview(data[:3 * PIECE]))
        assert writer._pending_bytes <= pagecache.WRITE_WINDOW
        assert small_pieces, "pieces beyond the window are dropped while writing"
        writer.write(100 + 3 * PIECE, memoryview(data[3 * PIECE:]))
        writer.finish()
    assert path.read_bytes()[100:] == data.tobytes()
    assert covered(small_pieces) == set(range(100, 100 + len(data)))
    waited = [(offset, length) for offset, length, flags in synced if flags & pagecache._SYNC_WAIT_AFTER]
    assert sorted(waited) == sorted(small_pieces), "each piece is on disk before it is dropped"


def failing_sync(code: int):
    def sync(fd, offset, length, flags):
        ctypes.set_errno(code)
        return -1
    return sync


def test_write_behind_reports_a_disk_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(pagecache, "_sync_file_range", failing_sync(errno.EIO))
    path = tmp_path / "out.bin"
    with open(path, "wb", buffering=0) as f:
        writer = pagecache.WriteBehind(f, str(path))
        writer._enabled = True
        with pytest.raises(OSError, match=f"writing {path}"):
            writer.write(0, memoryview(b"x" * 10))


def test_write_behind_writes_plainly_where_the_file_system_refuses_it(tmp_path, monkeypatch):
    monkeypatch.setattr(pagecache, "_sync_file_range", failing_sync(errno.EINVAL))
    path = tmp_path / "out.bin"
    data = os.urandom(3 * PIECE)
    with open(path, "wb", buffering=0) as f:
        writer = pagecache.WriteBehind(f, str(path))
        writer._enabled = True
        writer.write(0, memoryview(data))
        writer.finish()
        assert not writer._enabled
    assert path.read_bytes() == data
