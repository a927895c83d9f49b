"""Helpers shared by the benchmarks (no framework imports: any benchmark may use them)."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable

import numpy as np


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


def warm_memory(nbytes: int) -> None:
    """Touch and free ``nbytes`` of memory, so that the next call finds it host-backed.

    This VM hands memory that stays free for a couple of seconds back to the host
    (virtio-balloon free page reporting), and the first touch of such memory is
    slow. A call that needs fresh page cache (a new file written beside an old one)
    would pay for that; one that rewrites a file in place reuses the pages it frees.
    """
    if nbytes > 0:
        block = np.ones(nbytes, dtype=np.uint8)
        del block


def rotate(variants: dict[str, Callable[[], object]], runs: int,
           warm: int = 0) -> dict[str, float]:
    """Median seconds of each variant over ``runs`` rounds in rotating order.

    ``warm`` bytes of memory are touched before every timed call (``warm_memory``).
    """
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(runs):
        for offset in range(len(names)):
            name = names[(round_number + offset) % len(names)]
            # no variant pays for the write-back of the one before (save_weights and
            # torch.save do not fsync: their dirty pages would land on the next variant)
            os.sync()
            warm_memory(warm)
            times[name].append(timed(variants[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], baselines: dict[str, str]) -> None:
    """Print each variant's median and its ratio to its baseline (lower is faster)."""
    print(f"\n{title}")
    print(f"{'variant':34} {'median s':>9} {'x baseline':>11}")
    for name, seconds in medians.items():
        print(f"{name:34} {seconds:9.3f} {seconds / medians[baselines[name]]:10.2f}x")
