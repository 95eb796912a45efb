"""Streamers: text as generate produces it, through a callback or an iterator.

generate() calls streamer.put(ids) with the prompt, then with each new token, and end() at the
close (transformers' streamer protocol). The decoding is incremental without breaking characters:
text whose last token ends inside a multi-byte character (decoded as U+FFFD) or inside a word is
held back until the next token completes it, as transformers' TextStreamer does.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class TextStreamer:
    """Hands each finished piece of text to on_text (default: print to stdout without a newline).

    One row at a time (batch 1), as in transformers. skip_prompt leaves out the prompt's text;
    decode_kwargs go to tokenizer.decode (e.g. skip_special_tokens=True).
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, on_text: Callable[[str], None] | None = None,
                 **decode_kwargs: Any):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.on_text = on_text or _print_text
        self._ids: list[int] = []
        self._printed = 0
        self._prompt_pending = True

    def put(self, ids: Any) -> None:
        """Take the prompt (first call) or the next token of the one row being generated."""
        ids = np.asarray(ids)
        if (ids.ndim > 1 and ids.shape[0] > 1) or (ids.size > 1 and not self._prompt_pending):
            raise ValueError(f"{type(self).__name__} streams one row at a time, got ids of shape {ids.shape}")
        if self._prompt_pending:
            self._prompt_pending = False
            if self.skip_prompt:
                return
        self._ids.extend(int(i) for i in ids.reshape(-1))
        text = self.tokenizer.decode(self._ids, **self.decode_kwargs)
        if text.endswith("\n"):
            ready = len(text)
        elif text.endswith("\ufffd"):
            ready = self._printed
        else:
            ready = max(self._printed, text.rfind(" ") + 1)
        if ready > self._printed:
            self.on_text(text[self._printed:ready])
            self._printed = ready
        if text.endswith("\n"):
            self._ids, self._printed = [], 0

    def end(self) -> None:
        """Flush whatever text is held back."""
        if self._ids:
            text = self.tokenizer.decode(self._ids, **self.decode_kwargs)
            if len(text) > self._printed:
                self.on_text(text[self._printed:])
        self._ids, self._printed = [], 0
        self._prompt_pending = True
        self.on_text_end()

    def on_text_end(self) -> None:
        """Called once after the last piece of text."""


def _print_text(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class TextIteratorStreamer(TextStreamer):
    """An iterator over the text pieces: run generate in a thread and read `for text in streamer`.

    timeout (seconds) bounds the wait for each piece; queue.Empty is raised when it runs out.
    """

    _END = object()

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None,
                 **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, on_text=self._queue_text, **decode_kwargs)
        self._queue: queue.Queue = queue.Queue()
        self.timeout = timeout

    def _queue_text(self, text: str) -> None:
        self._queue.put(text)

    def on_text_end(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._queue.get(timeout=self.timeout)
            if item is self._END:
                return
            yield item
