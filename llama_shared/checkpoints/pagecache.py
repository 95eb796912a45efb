"""A single pass over a checkpoint that keeps the page cache small: pages of the source are dropped
once read, and pages written are sent to disk a few pieces behind the writer and dropped.

Without this a conversion leaves the model in the page cache twice (source and output), and its
writes pile up as dirty pages until the kernel's own writeback throttles them. On virtual machines
that hand free memory back to their host (free page reporting), every page the cache grows into
also costs a fault on the host, so recycling a few dozen MB of cache is cheaper than growing it.
Where the system lacks posix_fadvise or sync_file_range (not Linux), files are read and written
the ordinary way.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
from typing import BinaryIO

import numpy as np

from llama_shared.errors import CheckpointError

# Bytes read or written per call: the page cache a reader holds at once. How many written bytes
# may wait for the disk before the writer waits for the oldest piece.
PIECE = 16 * 2**20
WRITE_WINDOW = 4 * PIECE

_SYNC_WAIT_BEFORE, _SYNC_WRITE, _SYNC_WAIT_AFTER = 1, 2, 4


def _sync_file_range_function():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _sync_file_range_function()


def drop_cached(fd: int, offset: int = 0, length: int = 0) -> None:
    """Evict the clean cached pages of [offset, offset + length) of an open file (length 0: to its end)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def drop_cached_file(path: str) -> None:
    """Evict the clean cached pages of one file (dirty pages stay, unwritten)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # removed meanwhile, or unreadable: nothing of ours to drop
        return
    try:
        drop_cached(fd)
    finally:
        os.close(fd)


def drop_cached_files(directory: str) -> None:
    """Evict the clean cached pages of every file under directory (dirty pages stay, unwritten)."""
    for root, _, names in os.walk(directory):
        for name in names:
            drop_cached_file(os.path.join(root, name))


def read_into(file: BinaryIO, buffer: memoryview, offset: int, keep_cached: bool = False) -> int:
    """Read len(buffer) bytes at offset of an unbuffered file (fewer only at its end) piece by piece,
    dropping each piece from the page cache once copied unless keep_cached; returns the bytes read."""
    done = 0
    while done < len(buffer):
        file.seek(offset + done)
        n = file.readinto(buffer[done:done + PIECE])
        if not n:
            break
        if not keep_cached:
            drop_cached(file.fileno(), offset + done, n)
        done += n
    return done


def read_tensor(path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, name: str,
                keep_cached: bool = False) -> np.ndarray:
    """A new array of the tensor stored contiguously at offset of path (see read_into)."""
    array = np.empty(shape, dtype)
    with open(path, "rb", buffering=0) as f:
        n = read_into(f, memoryview(array.reshape(-1).view(np.uint8)), offset, keep_cached)
    if n != array.nbytes:
        raise CheckpointError(f"{path} is truncated inside tensor {name!r}")
    return array


class WriteBehind:
    """Positional writes to one unbuffered file whose pages go to disk a few pieces behind the writer
    and are then dropped, so that the file's dirty and cached pages stay under WRITE_WINDOW + PIECE.

    finish() waits for the last pieces; an I/O error reported while waiting is raised naming the file.
    """

    def __init__(self, file: BinaryIO, path: str):
        self.file, self.fd, self.path = file, file.fileno(), path
        self._pending: collections.deque[tuple[int, int]] = collections.deque()
        self._pending_bytes = 0
        self._enabled = _sync_file_range is not None

    def write(self, offset: int, data: memoryview) -> None:
        """Write data at offset, piece by piece."""
        data = data.cast("B")
        for start in range(0, len(data), PIECE):
            piece = data[start:start + PIECE]
            self.file.seek(offset + start)
            done = 0
            while done < len(piece):
                done += self.file.write(piece[done:])
            self._written(offset + start, len(piece))

    def finish(self) -> None:
        """Wait until every piece written is on its way to disk and dropped from the page cache."""
        while self._pending:
            self._retire()

    def _written(self, offset: int, length: int) -> None:
        if not self._enabled:
            return
        if not self._sync(offset, length, _SYNC_WRITE):
            return
        self._pending.append((offset, length))
        self._pending_bytes += length
        while self._pending_bytes > WRITE_WINDOW:
            self._retire()

    def _retire(self) -> None:
        offset, length = self._pending.popleft()
        self._pending_bytes -= length
        if self._sync(offset, length, _SYNC_WAIT_BEFORE | _SYNC_WRITE | _SYNC_WAIT_AFTER):
            drop_cached(self.fd, offset, length)

    def _sync(self, offset: int, length: int, flags: int) -> bool:
        """sync_file_range; False (and write-behind off for this file) where the file system refuses it."""
        if _sync_file_range(self.fd, offset, length, flags) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.EOPNOTSUPP):
            self._enabled = False
            self._pending.clear()
            self._pending_bytes = 0
            return False
        raise OSError(code, f"writing {self.path}: {os.strerror(code)}")
