"""Helpers shared by the benchmarks (no framework imports: any benchmark may use them)."""

from __future__ import annotations

import gc
import os
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


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file another library wrote to disk (what ckpt does before returning)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
