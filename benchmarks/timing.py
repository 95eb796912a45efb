"""Wall-clock timing shared by the benchmarks: best of several passes, taken round-robin."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], passes: int = 3) -> float:
    """Minimum wall time of fn() over passes runs (the machine's noise only ever adds time)."""
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best_times(runners: dict[str, Callable[[], object]], passes: int) -> dict[str, float]:
    """Best wall time of each runner, passes taken round-robin so that every implementation meets
    the same spells of load on a shared machine."""
    best = {name: float("inf") for name in runners}
    for _ in range(passes):
        for name, run in runners.items():
            best[name] = min(best[name], best_time(run, 1))
    return best
