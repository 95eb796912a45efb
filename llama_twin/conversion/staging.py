"""Safe output: a conversion writes into a temporary folder beside its destination (for a single-file
format, a file inside such a folder) and renames it into place only when complete, so a failed
conversion leaves no partial destination; the source is only ever read.

Without overwrite the final rename never replaces anything: where the system has an atomic
no-replace rename (Linux renameat2 with RENAME_NOREPLACE) it is used, elsewhere the destination is
checked just before a plain rename, which can then replace at most an empty folder made in between.
A destination that appears while the conversion runs is left as it is; the finished output is kept
beside it and the error says where.

A staging folder holds a marker naming its writer (host, boot, process id and start time). SIGINT,
SIGTERM and SIGHUP remove it at once; after a SIGKILL (or a power cut) the next conversion into the
same parent folder removes it, but only when the marker proves its writer gone. A folder without
the marker, or whose writer may still run, is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llama_shared.errors import ConversionError
from llama_shared.files import read_json

MARKER = ".llama-twin-staging.json"
# Staging folders (.NAME.partial-*) and folders holding a destination being replaced (.NAME.replaced-*).
_OURS = re.compile(r"^\..+\.(partial|replaced)-[A-Za-z0-9_]+$")
_TERMINATING = ("SIGINT", "SIGTERM", "SIGHUP")

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _renameat2_function():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _renameat2_function()


def rename_no_replace(src: str, dst: str) -> None:
    """Rename src to dst, or raise FileExistsError when dst exists: atomic with renameat2's
    RENAME_NOREPLACE; where the system or file system lacks it, a check just before the rename."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), dst)
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), src, None, dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def check_destination(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool,
                      single_file: bool = False) -> None:
    """Refuse a destination inside the source (or holding it) and a non-empty one unless overwrite;
    for a single-file format, a destination that is a folder, or an existing file unless overwrite."""
    src_real, dst_real = os.path.realpath(src), os.path.realpath(dst)
    if dst_real == src_real or dst_real.startswith(src_real + os.sep):
        raise ConversionError(f"destination {dst} is inside the source {src}; choose a path outside it")
    if single_file:
        if os.path.isdir(dst_real):
            raise ConversionError(f"destination {dst} is a folder; this format is written to a file path")
        if os.path.exists(dst_real) and not overwrite:
            raise ConversionError(f"destination {dst} exists; pass overwrite=True (--overwrite) to replace it")
        return
    if src_real.startswith(dst_real + os.sep):
        raise ConversionError(f"the source {src} is inside the destination {dst}, which conversion would replace")
    if os.path.exists(dst_real) and not os.path.isdir(dst_real):
        raise ConversionError(f"destination {dst} exists and is not a folder")
    if os.path.isdir(dst_real) and os.listdir(dst_real) and not overwrite:
        raise ConversionError(f"destination {dst} is not empty; pass overwrite=True (--overwrite) to replace it")


@contextmanager
def staged_output(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside dst; on success rename it into place, on any error (and on
    SIGINT, SIGTERM, SIGHUP) remove it, so dst is either untouched or complete.

    Without overwrite, dst may only be absent or the empty folder check_destination found; if
    anything else is there at the end, it is left untouched and ConversionError says where the
    finished output was kept. With overwrite, whatever is at dst is replaced. Stale staging folders
    of killed conversions into the same parent are removed first (see remove_stale).
    """
    dst = os.path.realpath(dst)
    with _staging(dst) as (staging, was_empty_folder):
        yield staging
    with _signals_deferred():
        os.remove(os.path.join(staging, MARKER))
        os.chmod(staging, 0o777 & ~_umask())
        if overwrite:
            _replace(staging, dst)
        else:
            _place(staging, dst, was_empty_folder)


@contextmanager
def staged_file(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary file path for a single-file format, inside a staging folder beside dst (its
    marker, signals and stale removal as for staged_output); on success the file takes dst's name.
    Without overwrite a file that appeared at dst meanwhile is left as it is and ConversionError says
    where the finished output was kept; with overwrite it is replaced atomically."""
    dst = os.path.realpath(dst)
    with _staging(dst) as (staging, _):
        path = os.path.join(staging, os.path.basename(dst))
        yield path
    with _signals_deferred():
        os.remove(os.path.join(staging, MARKER))
        os.chmod(path, 0o666 & ~_umask())
        try:
            if overwrite:
                os.replace(path, dst)
            else:
                rename_no_replace(path, dst)
        except OSError as e:
            kept = _keep_beside(path, dst, staging)
            raise ConversionError(f"destination {dst} {_taken_reason(e)}; the converted checkpoint is complete at "
                                  f"{kept}") from None
        finally:
            if not os.path.exists(path):
                shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _staging(dst: str) -> Iterator[tuple[str, bool]]:
    """(a marked staging folder beside dst, whether dst was an empty folder when it was made) for the
    body of a with-block; the folder is removed on any error or terminating signal. The caller
    removes the marker once it places the output."""
    parent, name = os.path.split(dst)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale(parent)
        was_empty_folder = os.path.isdir(dst)
        staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    except OSError as e:
        raise ConversionError(f"cannot create a staging folder for {dst} in {parent}: {e.strerror}") from None
    with _terminating_signals_raise():
        try:
            _mark(staging)
            yield staging, was_empty_folder
        except OSError as e:  # a full disk, a read-only or vanished folder, an unreadable source file
            shutil.rmtree(staging, ignore_errors=True)
            raise ConversionError(f"conversion into {dst} stopped and left nothing behind: {e}") from e
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _place(staging: str, dst: str, was_empty_folder: bool) -> None:
    """Rename staging to dst without replacing anything but the empty folder that was there."""
    try:
        if was_empty_folder:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(dst)  # only an empty folder goes: one filled meanwhile stays
        rename_no_replace(staging, dst)
    except OSError as e:
        kept = _keep_beside(staging, dst, staging)
        raise ConversionError(f"destination {dst} {_taken_reason(e)}; the converted checkpoint is complete at "
                              f"{kept}") from None


def _taken_reason(error: OSError) -> str:
    if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
        return "appeared while converting (another process?) and was left as it is"
    return f"could not be replaced ({error.strerror})"


def _keep_beside(output: str, dst: str, staging: str) -> str:
    """Give a finished output (the staging folder, or the file in it) that could not take dst a
    visible name beside dst; return where it is."""
    kept = f"{dst}.converted-{os.path.basename(staging).rsplit('-', 1)[-1]}"
    try:
        rename_no_replace(output, kept)
    except OSError:
        return output
    return kept


def _replace(staging: str, dst: str) -> None:
    """Rename staging to dst, retiring what is there first and removing it once staging is in place."""
    parent, name = os.path.split(dst)
    if not os.path.lexists(dst):
        try:
            rename_no_replace(staging, dst)
            return
        except FileExistsError:
            pass
    retired = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=parent)
    _mark(retired)
    os.rename(dst, os.path.join(retired, name))
    os.rename(staging, dst)
    shutil.rmtree(os.path.join(retired, name))
    shutil.rmtree(retired)


# ------------------------------------------------------------------------------------------------
# Killed conversions


def remove_stale(parent: str) -> None:
    """Remove the staging folders in parent whose marker proves their writer gone. A folder that still
    holds a destination being replaced is left, with a warning naming it, since it may be the only
    copy of what was there."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        if not _OURS.match(name) or os.path.islink(path) or not os.path.isdir(path):
            continue
        writer = _read_mark(path)
        if writer is None or not _writer_gone(writer):
            continue
        contents = set(os.listdir(path)) - {MARKER}
        if ".replaced-" in name and contents:
            warnings.warn(f"{path} holds the previous contents of a destination whose replacement was killed "
                          f"midway; check it and remove it yourself", stacklevel=3)
            continue
        shutil.rmtree(path, ignore_errors=True)


def _writer() -> dict[str, Any]:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _mark(folder: str) -> None:
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        json.dump(_writer(), f)


def _read_mark(folder: str) -> dict[str, Any] | None:
    path = os.path.join(folder, MARKER)
    if os.path.islink(path):
        return None
    try:
        writer = read_json(path, ConversionError, limit=4096)
    except ConversionError:
        return None
    if not isinstance(writer, dict) or not isinstance(writer.get("pid"), int) or isinstance(writer["pid"], bool):
        return None
    return writer


def _writer_gone(writer: dict[str, Any]) -> bool:
    """True only when the process that wrote the marker has certainly ended: same host, and another
    boot, or no such process, or a process of that id started at another time (an id reused)."""
    if os.name != "posix" or writer.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    if boot is not None and writer.get("boot") is not None and writer["boot"] != boot:
        return True
    try:
        os.kill(writer["pid"], 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    started = _start_time(writer["pid"])
    return started is not None and writer.get("started") is not None and started != writer["started"]


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux /proc); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


class _Terminated(BaseException):
    """A terminating signal, raised to unwind (and remove the staging folder) before dying of it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _terminating_signals_raise() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP that would end the process unwind it first (so
    that cleanups run), then end it as they would have. Only in the main thread, only for signals
    left at their default action (Python's own SIGINT already raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = {}
    for name in _TERMINATING:
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
            installed[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    except _Terminated as terminated:
        _restore(installed)
        signal.raise_signal(terminated.signum)
        raise
    finally:
        _restore(installed)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(signum)


def _restore(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back while the output is moved into place (POSIX)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {getattr(signal, name) for name in _TERMINATING if hasattr(signal, name)}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
