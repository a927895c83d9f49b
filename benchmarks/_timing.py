"""Timing helper shared by the benchmarks (no framework imports: any benchmark may use it)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes, after a garbage collection; its result is dropped untimed."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed
