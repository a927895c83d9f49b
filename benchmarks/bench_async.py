"""How long save() blocks with async_save=True against a synchronous save, and what
that buys a training loop that saves every step.

    python benchmarks/bench_async.py [--dir DIR] [--mib 1024] [--saves 5] [--compute 3.0]

1. Blocking time of ``save()`` for a 1 GiB state (16 float32 arrays): sync, async
   first save (allocates the staging buffers) and async warm saves (reuses them).
2. A loop of ``--saves`` iterations, each ``--compute`` seconds of simulated compute
   (numpy matmuls on other data) followed by a save, async vs sync end-to-end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import numpy as np

import ckpt


def make_state(mib: int) -> dict[str, np.ndarray]:
    per = mib * 2**20 // 16 // 4
    rng = np.random.default_rng(0)
    return {f"layer{i}": rng.standard_normal(per, dtype=np.float32) for i in range(16)}


def compute(seconds: float, work: np.ndarray) -> None:
    """Busy numpy work for about ``seconds`` (stands in for a training step)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        work @ work


def blocking_times(directory: str, state: dict, saves: int, async_save: bool) -> list[float]:
    mgr = ckpt.CheckpointManager(directory, async_save=async_save, keep=ckpt.KeepLast(1),
                                 progress=False)
    times = []
    for step in range(saves):
        mgr.wait_until_finished()  # measure save() alone, not waiting for the previous
        start = time.perf_counter()
        mgr.save(step, state)
        times.append(time.perf_counter() - start)
    mgr.close()
    return times


def training_loop(directory: str, state: dict, saves: int, seconds: float,
                  async_save: bool) -> float:
    mgr = ckpt.CheckpointManager(directory, async_save=async_save, keep=ckpt.KeepLast(1),
                                 progress=False)
    work = np.random.default_rng(1).standard_normal((256, 256), dtype=np.float32)
    start = time.perf_counter()
    for step in range(saves):
        compute(seconds, work)
        state["layer0"][:8] = step  # the loop changes its state every step
        mgr.save(step, state)
    mgr.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--compute", type=float, default=3.0,
                        help="seconds of simulated compute between saves")
    args = parser.parse_args()
    state = make_state(args.mib)
    root = tempfile.mkdtemp(dir=args.dir, prefix="ckpt-bench-async-")
    try:
        sync = blocking_times(f"{root}/sync", state, args.saves, False)
        asyn = blocking_times(f"{root}/async", state, args.saves, True)
        sync_median = statistics.median(sync)
        warm = statistics.median(asyn[1:]) if len(asyn) > 1 else asyn[0]
        print(f"state: {args.mib} MiB in 16 float32 arrays; {args.saves} saves each")
        print(f"save() blocks, sync (median):        {sync_median:7.3f} s")
        print(f"save() blocks, async first save:     {asyn[0]:7.3f} s  "
              f"({asyn[0] / sync_median:.2f}x sync; allocates staging buffers)")
        print(f"save() blocks, async warm (median):  {warm:7.3f} s  "
              f"({warm / sync_median:.2f}x sync; target <= 0.10x)")
        sync_loop = training_loop(f"{root}/loop-sync", state, args.saves, args.compute, False)
        async_loop = training_loop(f"{root}/loop-async", state, args.saves, args.compute, True)
        ideal = args.saves * args.compute
        print(f"\nloop: {args.saves} x ({args.compute:.1f} s compute + save), "
              f"compute alone {ideal:.2f} s")
        print(f"sync end-to-end:   {sync_loop:7.2f} s  ({sync_loop / ideal:.2f}x compute)")
        print(f"async end-to-end:  {async_loop:7.2f} s  ({async_loop / ideal:.2f}x compute; "
              f"{sync_loop / async_loop:.2f}x faster than sync)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
