"""Safe output: a conversion writes into a temporary folder beside its destination and renames it
into place only when complete, so a failed conversion leaves no partial destination; the source is
only ever read.

Without overwrite the final rename never replaces anything: where the system has an atomic
no-replace rename (Linux renameat2 with RENAME_NOREPLACE) it is used, elsewhere the destination is
checked just before a plain rename, which can then replace at most an empty folder made in between.
A destination that appears while the conversion runs is left as it is; the finished output is kept
beside it and the error says where.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from llama_shared.errors import ConversionError

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


def check_destination(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool) -> None:
    """Refuse a destination inside the source (or holding it) and a non-empty one unless overwrite."""
    src_real, dst_real = os.path.realpath(src), os.path.realpath(dst)
    if dst_real == src_real or dst_real.startswith(src_real + os.sep):
        raise ConversionError(f"destination {dst} is inside the source {src}; choose a folder outside it")
    if src_real.startswith(dst_real + os.sep):
        raise ConversionError(f"the source {src} is inside the destination {dst}, which conversion would replace")
    if os.path.exists(dst_real) and not os.path.isdir(dst_real):
        raise ConversionError(f"destination {dst} exists and is not a folder")
    if os.path.isdir(dst_real) and os.listdir(dst_real) and not overwrite:
        raise ConversionError(f"destination {dst} is not empty; pass overwrite=True (--overwrite) to replace it")


@contextmanager
def staged_output(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside dst; on success rename it into place, on any error remove it,
    so dst is either untouched or complete.

    Without overwrite, dst may only be absent or the empty folder check_destination found; if
    anything else is there at the end, it is left untouched and ConversionError says where the
    finished output was kept. With overwrite, whatever is at dst is replaced.
    """
    dst = os.path.realpath(dst)
    parent, name = os.path.split(dst)
    os.makedirs(parent, exist_ok=True)
    was_empty_folder = os.path.isdir(dst)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.chmod(staging, 0o777 & ~_umask())
    if overwrite:
        _replace(staging, dst)
    else:
        _place(staging, dst, was_empty_folder)


def _place(staging: str, dst: str, was_empty_folder: bool) -> None:
    """Rename staging to dst without replacing anything but the empty folder that was there."""
    try:
        if was_empty_folder:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(dst)  # only an empty folder goes: one filled meanwhile stays
        rename_no_replace(staging, dst)
    except OSError as e:
        kept = _keep_beside(staging, dst)
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            reason = "appeared while converting (another process?) and was left as it is"
        else:
            reason = f"could not be replaced ({e.strerror})"
        raise ConversionError(f"destination {dst} {reason}; the converted checkpoint is complete at {kept}") from None


def _keep_beside(staging: str, dst: str) -> str:
    """Give a finished output that could not take dst a visible name beside it; return where it is."""
    kept = f"{dst}.converted-{os.path.basename(staging).rsplit('-', 1)[-1]}"
    try:
        rename_no_replace(staging, kept)
    except OSError:
        return staging
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
    os.rename(dst, os.path.join(retired, name))
    os.rename(staging, dst)
    shutil.rmtree(retired)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
