"""tqdm progress over work measured in bytes, shown only when there is enough work to wait for."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")
QUIET_BELOW = 1 << 30  # a checkpoint under 1 GiB loads too fast for a bar to help


def byte_progress(items: Iterable[tuple[Item, int]], description: str,
                  quiet_below: int = QUIET_BELOW) -> Iterator[Item]:
    """Yield each item of (item, nbytes) pairs, advancing a byte progress bar after it is handled."""
    items = list(items)
    total = sum(size for _, size in items)
    if total < quiet_below:
        yield from (item for item, _ in items)
        return
    with tqdm(total=total, unit="B", unit_scale=True, desc=description) as bar:
        for item, size in items:
            yield item
            bar.update(size)
