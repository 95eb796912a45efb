"""Safe output: a conversion writes into a temporary folder (or, for a single-file format, a
temporary file) beside its destination and renames it into place only when complete, so a failed
conversion leaves no partial destination; the source is only ever read."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from llama_shared.errors import CheckpointError


def check_destination(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool,
                      single_file: bool = False) -> None:
    """Refuse a destination inside the source (or holding it) and a non-empty one unless overwrite;
    for a single-file format, a destination that is a folder, or an existing file unless overwrite."""
    src_real, dst_real = os.path.realpath(src), os.path.realpath(dst)
    if dst_real == src_real or dst_real.startswith(src_real + os.sep):
        raise CheckpointError(f"destination {dst} is inside the source {src}; choose a path outside it")
    if single_file:
        if os.path.isdir(dst_real):
            raise CheckpointError(f"destination {dst} is a folder; this format is written to a file path")
        if os.path.exists(dst_real) and not overwrite:
            raise CheckpointError(f"destination {dst} exists; pass overwrite=True (--overwrite) to replace it")
        return
    if src_real.startswith(dst_real + os.sep):
        raise CheckpointError(f"the source {src} is inside the destination {dst}, which conversion would replace")
    if os.path.exists(dst_real) and not os.path.isdir(dst_real):
        raise CheckpointError(f"destination {dst} exists and is not a folder")
    if os.path.isdir(dst_real) and os.listdir(dst_real) and not overwrite:
        raise CheckpointError(f"destination {dst} is not empty; pass overwrite=True (--overwrite) to replace it")


@contextmanager
def staged_output(dst: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder beside dst; on success rename it into place (replacing dst), on any
    error remove it, so dst is either untouched or complete."""
    dst = os.path.realpath(dst)
    parent, name = os.path.split(dst)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.chmod(staging, 0o777 & ~_umask())
    if not os.path.exists(dst):
        os.rename(staging, dst)
        return
    retired = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=parent)
    os.rename(dst, os.path.join(retired, name))
    os.rename(staging, dst)
    shutil.rmtree(retired)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_file(dst: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file path beside dst; on success rename it onto dst (atomically replacing
    an old one), on any error remove it, so dst is either untouched or complete."""
    dst = os.path.realpath(dst)
    parent, name = os.path.split(dst)
    os.makedirs(parent, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{name}.partial-", dir=parent)
    os.close(handle)
    try:
        yield staging
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise
    os.chmod(staging, 0o666 & ~_umask())
    os.replace(staging, dst)
