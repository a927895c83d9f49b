"""ckpt at scale (issue 15): many checkpoints in one directory, many small leaves.

Every figure comes with its baseline, measured in the same run, in rotating order,
several repetitions, medians:

* listing 10,000 checkpoints: a fresh ``CheckpointManager(dir).latest_step()``,
  ``all_steps()`` and ``infos()``, against reading and checking every manifest
  (what a fresh manager did before the listing cache); ``ckpt ls`` as a command,
  against starting the interpreter and importing the CLI;
* saving with ``KeepLast(3)`` next to 10,000 old steps, against saving into an empty
  directory; the pruning (deciding, checking each doomed step's manifest, deleting
  9,998 steps and dropping their records from memory) is reported on its own,
  against deleting them with one fsync per step (how pruning deleted before);
* 10,000 and 100,000 leaves of 1 KiB saved and restored through the manager, against
  ``torch.save``/``torch.load`` of the same tensors (every writer fsyncs its file).

* fine-tuning (``--only finetune``): a 1 GiB state of which 90% is frozen, saved step
  after step with ``incremental=True`` against full saves, both through a
  ``CheckpointManager(keep=KeepLast(2))``: bytes written per save (files new in the
  step directory, hard links not counted) and save time (digests and pruning
  included), as ratios incremental/full.

    python benchmarks/bench_scale.py [--dir DIR] [--repeat 5] [--steps 10000] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from _timing import fsync_path, timed  # benchmarks/ is on sys.path when run as a script

import ckpt
from ckpt import fsutil, incremental, manifest

try:
    import torch
except ImportError:  # the small-leaf case needs it for its baseline
    torch = None


# ------------------------------------------------------------ helpers


def clone_steps(directory: str, count: int) -> None:
    """``count`` checkpoints (a small state, a metric each) in a fresh ``directory``.

    One real save, then its step directory copied with the manifest rewritten per
    step: 10,000 real saves would take minutes of fsyncs. Then one writer operation
    (deleting nothing) leaves the listing cache a real writer would leave.
    """
    shutil.rmtree(directory, ignore_errors=True)
    seed = ckpt.CheckpointManager(directory)
    seed.save(0, {"w": np.zeros(16, np.float32), "step": 0}, metrics={"loss": 1.0})
    source = os.path.join(directory, "step_0")
    record = json.loads(open(os.path.join(source, "manifest.json"), "rb").read())
    data = open(os.path.join(source, "state.h5"), "rb").read()
    for step in range(1, count):
        target = os.path.join(directory, f"step_{step}")
        os.mkdir(target)
        with open(os.path.join(target, "state.h5"), "wb") as handle:
            handle.write(data)
        record.update(step=step, time=record["time"] + 1, metrics={"loss": 1 / (step + 1)})
        with open(os.path.join(target, "manifest.json"), "wb") as handle:
            handle.write(json.dumps(record, separators=(",", ":")).encode())
    time.sleep(0.1)  # the cache records manifests older than a timestamp tick (50 ms)
    ckpt.CheckpointManager(directory)._delete_steps([])
    # on disk, as old steps are: else the next fsync (a save's) commits the journal of
    # these 30,000 creations (2 ms more of a save next to them, 0.3 ms into an empty dir)
    os.sync()


def settle() -> None:
    """What is written is on disk and the disk idle again, as it is by the time a run
    saves next to old steps: a save's fsyncs right after ``os.sync()`` of 30,000 new
    entries waited for the device (0.4-0.8 ms more per save, on this VM)."""
    os.sync()
    time.sleep(2)


def read_every_manifest(directory: str) -> list:
    """The baseline: what a fresh manager did to list a directory before issue 15."""
    return [manifest.step_info(manifest.read(path, step), path)
            for step, path in fsutil.step_dirs(directory).items()]


def rotating(variants: dict[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    """Median seconds of each variant (each returns its own timing), in rotating order."""
    names = list(variants)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(repeat):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            runs[name].append(variants[name]())
    return {name: statistics.median(times) for name, times in runs.items()}


def row(label: str, seconds: float, baseline: float | None = None, note: str = "") -> None:
    ratio = f"{baseline / seconds:8.2f}x" if baseline else " " * 9
    print(f"  {label:46} {seconds * 1000:10.1f} ms {ratio}  {note}")


# ------------------------------------------------------------ cases


def case_listing(scratch: str, repeat: int, steps: int) -> None:
    directory = os.path.join(scratch, "listing")
    clone_steps(directory, steps)
    kept = ckpt.CheckpointManager(directory)
    kept.all_steps()
    ckpt_ls = [sys.executable, "-m", "ckpt.cli", "ls", directory]
    startup = [sys.executable, "-c", "import ckpt.cli"]

    def command(args: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    results = rotating({
        "baseline": lambda: timed(lambda: read_every_manifest(directory)),
        "latest": lambda: timed(lambda: ckpt.CheckpointManager(directory).latest_step()),
        "all": lambda: timed(lambda: ckpt.CheckpointManager(directory).all_steps()),
        "infos": lambda: timed(lambda: ckpt.CheckpointManager(directory).infos()),
        "warm": lambda: timed(kept.all_steps),
        "ls": lambda: command(ckpt_ls),
        "startup": lambda: command(startup),
    }, repeat)
    base = results["baseline"]
    print(f"\nlisting {steps:,} checkpoints (x = faster than reading every manifest, "
          f"{base * 1000:.0f} ms)")
    row("CheckpointManager(dir).latest_step()", results["latest"], base, "target < 50 ms")
    row("CheckpointManager(dir).all_steps()", results["all"], base, "target < 50 ms")
    row("CheckpointManager(dir).infos()", results["infos"], base, "metrics, times too")
    row("all_steps() again, same manager", results["warm"], base)
    row("ckpt ls (a process)", results["ls"], None,
        f"target < 1 s; the interpreter and imports alone: {results['startup'] * 1000:.0f} ms")


def case_prune(scratch: str, repeat: int, steps: int) -> None:
    directory = os.path.join(scratch, "prune")
    state = {"w": np.ones(16, np.float32), "step": 1}

    def next_to_old_steps() -> tuple[float, float]:
        clone_steps(directory, steps)
        # as ckpt writers leave a directory: scanned for leftovers, marked clean
        with fsutil.writer_lock(directory, None):
            fsutil.remove_leftovers(directory)
        settle()
        mgr = ckpt.CheckpointManager(directory, keep=ckpt.KeepLast(3))
        deleting = [0.0]
        prune = mgr._prune

        def timed_prune() -> None:  # deciding, checking, deleting, dropping records
            started = time.perf_counter()
            prune()
            deleting[0] += time.perf_counter() - started

        mgr._prune = timed_prune
        total = timed(lambda: mgr.save(steps, state))
        assert len(os.listdir(directory)) < 10, "the old steps were not pruned"
        return total - deleting[0], deleting[0]

    def into_empty(keep: ckpt.Policy | None = None) -> float:
        shutil.rmtree(directory, ignore_errors=True)
        settle()  # as the other case
        mgr = ckpt.CheckpointManager(directory, keep=keep)
        return timed(lambda: mgr.save(1, state))

    keep_all: list[float] = []

    def fsync_each() -> float:
        # how pruning deleted before: rename, fsync the directory, remove, per step
        clone_steps(directory, steps)
        paths = list(fsutil.step_dirs(directory).values())[:-3]
        # first, next to these old steps, a save that keeps them all (the default),
        # in a directory as ckpt writers leave it (else it scans for leftovers: 5 ms)
        with fsutil.writer_lock(directory, None):
            fsutil.remove_leftovers(directory)
        settle()
        keep_all.append(timed(lambda: ckpt.CheckpointManager(directory).save(steps, state)))

        def delete_all() -> None:
            for path in paths:
                trash = os.path.join(directory, fsutil.trash_name(os.path.basename(path)))
                os.rename(path, trash)
                fsutil.fsync_dir(directory)
                fsutil.remove_dir(trash)

        return timed(delete_all)

    pruned: list[tuple[float, float]] = []
    results = rotating({
        "old": lambda: pruned.append(next_to_old_steps()) or pruned[-1][0],
        "empty": lambda: into_empty(ckpt.KeepLast(3)),
        "empty_all": into_empty,
        "fsync_each": fsync_each,
    }, repeat)
    deleting = statistics.median(d for _, d in pruned)
    print(f"\nsaving with KeepLast(3) next to {steps:,} old steps (x = how much faster "
          "than the baseline)")
    row("save into an empty directory (baseline)", results["empty"])
    row(f"save next to {steps:,} old steps, beyond pruning", results["old"],
        results["empty"], "target: as fast (>= 1.0x)")
    row(f"  its pruning: {steps - 2:,} steps checked, deleted", deleting,
        results["fsync_each"], f"baseline: deleting with an fsync each, "
        f"{results['fsync_each']:.1f} s")
    row("save into an empty directory, KeepAll (baseline)", results["empty_all"])
    row(f"save next to {steps:,} old steps, KeepAll", statistics.median(keep_all),
        results["empty_all"],
        "the default policy: nothing to prune")


def case_small_leaves(scratch: str, repeat: int, steps: int) -> None:
    if torch is None:
        print("\nsmall leaves: skipped (torch is not installed: it is the baseline)")
        return
    for count in (10_000, 100_000):
        rng = np.random.default_rng(1)
        state = {f"leaf{i}": rng.standard_normal(256, dtype=np.float32) for i in range(count)}
        tensors = {k: torch.from_numpy(v) for k, v in state.items()}
        run_dir, pt = os.path.join(scratch, "mgr"), os.path.join(scratch, "t.pt")

        def manager_save(run_dir: str = run_dir, state: dict = state) -> float:
            shutil.rmtree(run_dir, ignore_errors=True)
            return timed(lambda: ckpt.CheckpointManager(run_dir, progress=False).save(
                1, state))

        def manager_restore(run_dir: str = run_dir) -> float:
            return timed(lambda: ckpt.CheckpointManager(run_dir, progress=False).restore(1))

        def torch_save(tensors: dict = tensors, pt: str = pt) -> float:
            def save() -> None:
                torch.save(tensors, pt)
                fsync_path(pt)
            return timed(save)

        def torch_load(pt: str = pt) -> float:
            return timed(lambda: torch.load(pt))

        results = rotating({"ckpt save": manager_save, "ckpt restore": manager_restore,
                            "torch save": torch_save, "torch load": torch_load}, repeat)
        print(f"\n{count:,} leaves of 1 KiB through the manager (x = faster than torch; "
              "target >= 2x)")
        row("torch.save (baseline)", results["torch save"])
        row("CheckpointManager.save", results["ckpt save"], results["torch save"])
        row("torch.load (baseline)", results["torch load"])
        row("CheckpointManager.restore", results["ckpt restore"], results["torch load"])
        del state, tensors


def finetune_state(total_bytes: int = 1 << 30) -> dict:
    """A fine-tuning state: 90% frozen float32 weights (9 tensors), 10% trained ones
    (an adapter's weights and its two Adam moments), and the small leaves of a loop."""
    floats = total_bytes // 4
    frozen_each, rng = int(floats * 0.9) // 9, np.random.default_rng(3)
    trained_each = (floats - 9 * frozen_each) // 3
    frozen = {f"layer{i}": rng.standard_normal(frozen_each, dtype=np.float32)
              for i in range(9)}
    adapter = rng.standard_normal(trained_each, dtype=np.float32)
    return {"model": {"frozen": frozen, "adapter": adapter},
            "optimizer": {"exp_avg": np.zeros_like(adapter) + 0.1,
                          "exp_avg_sq": np.zeros_like(adapter) + 0.2},
            "step": 0, "lr": 1e-4}


def train_step(state: dict, step: int) -> None:
    """What a step changes: the trained tensors (in place, untimed), the counters."""
    state["model"]["adapter"] += np.float32(1e-3)
    state["optimizer"]["exp_avg"] *= np.float32(0.9)
    state["optimizer"]["exp_avg_sq"] *= np.float32(0.999)
    state["step"] = step


def new_bytes(directory: str, step_dir: str, known: set[int]) -> int:
    """Bytes of the files in ``step_dir`` whose inode no file of ``directory`` had
    before (``known``): what the save wrote, hard links to earlier files excluded."""
    return sum(os.stat(os.path.join(step_dir, name)).st_size for name in os.listdir(step_dir)
               if os.stat(os.path.join(step_dir, name)).st_ino not in known)


def inodes(directory: str) -> set[int]:
    return {entry.stat().st_ino for step_dir in fsutil.step_dirs(directory).values()
            for entry in os.scandir(step_dir)}


def case_finetune(scratch: str, repeat: int, steps: int) -> None:
    state = finetune_state()  # every page touched: this VM backs memory lazily
    arrays = [*state["model"]["frozen"].values(), state["model"]["adapter"],
              *state["optimizer"].values()]
    total = sum(array.nbytes for array in arrays)
    managers, written = {}, {}
    step = [0]
    for name, linking in (("full", False), ("incremental", True)):
        directory = os.path.join(scratch, f"finetune-{name}")
        managers[name] = ckpt.CheckpointManager(directory, keep=ckpt.KeepLast(2),
                                                incremental=linking, progress=False)
        written[name] = []
        for _ in range(2):  # warm-up: the first full write, then one save of each kind
            step[0] += 1
            train_step(state, step[0])
            managers[name].save(step[0], state)

    def save(name: str) -> float:
        mgr = managers[name]
        directory = os.fspath(mgr.directory)
        step[0] += 1
        train_step(state, step[0])
        known = inodes(directory)
        os.sync()  # no variant pays for the write-back of another's deletions
        seconds = timed(lambda: mgr.save(step[0], state))
        written[name].append(new_bytes(directory, mgr._step_path(step[0]), known))
        return seconds

    def digests() -> float:  # the part of an incremental save that reads every byte
        return timed(lambda: [incremental.digest(array) for array in arrays])

    results = rotating({"full": lambda: save("full"),
                        "incremental": lambda: save("incremental"),
                        "digests": digests}, repeat)
    full_bytes = statistics.median(written["full"])
    inc_bytes = statistics.median(written["incremental"])
    print(f"\nfine-tuning: {total / 2**30:.2f} GiB state, 90% frozen, KeepLast(2) "
          f"(x = incremental / full; targets <= 0.15 bytes, <= 0.25 time)")
    row("full save (baseline)", results["full"], None,
        f"{full_bytes / 2**20:8.1f} MiB written")
    row("incremental save", results["incremental"], None,
        f"{inc_bytes / 2**20:8.1f} MiB written")
    row("  of which: xxh3-128 digests of every leaf", results["digests"], None,
        "(measured alone)")
    print(f"  incremental / full: bytes {inc_bytes / full_bytes:.3f}, "
          f"time {results['incremental'] / results['full']:.3f}")


CASES = {"listing": case_listing, "prune": case_prune, "small": case_small_leaves,
         "finetune": case_finetune}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(dir=args.dir, prefix="ckpt-bench-scale-")
    try:
        print(f"medians of {args.repeat} runs in rotating order")
        for name in args.only or CASES:
            CASES[name](scratch, args.repeat, args.steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
