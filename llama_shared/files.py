"""Opening the files of a model folder: regular files only, JSON of bounded size.

A FIFO named config.json would block its reader forever, a device (/dev/zero, /dev/urandom) would
never end; both are refused with an error naming the file. A file is opened without blocking
(O_NONBLOCK, which a regular file ignores) and checked with fstat on the open descriptor, so a file
swapped for a FIFO after a check cannot block either.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, BinaryIO

from llama_shared.errors import LlamaTwinError

# A config, index or tokenizer JSON file is kilobytes to tens of megabytes; past this it is not one.
MAX_JSON_BYTES = 100 * 2**20


def open_regular(path: str | os.PathLike, error: type[LlamaTwinError]) -> BinaryIO:
    """path opened for binary reading; error (naming the file) if it is missing or not a regular file."""
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except OSError as e:
        raise error(f"cannot open {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket or other special file"
        raise error(f"{path} is {kind}, not a regular file")
    return os.fdopen(fd, "rb")


def read_json(path: str | os.PathLike, error: type[LlamaTwinError], limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON content of a regular file of at most limit bytes, UTF-8; error naming the file otherwise."""
    with open_regular(path, error) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{os.fspath(path)} is larger than {limit} bytes, too large for a JSON file of a model folder")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise error(f"{os.fspath(path)} is not valid JSON: {e}") from None
