"""ckpt vs ``torch.save``/``torch.load`` on a full training state: model + AdamW.

    python benchmarks/bench_torch.py                       # 100M parameters, ~1.2 GB
    python benchmarks/bench_torch.py --params 10_000_000 --repeats 3 --cache cold

The state is an 8-layer MLP with ``--params`` float32 parameters and AdamW's state
for each (``step``, ``exp_avg``, ``exp_avg_sq``): 12 bytes per parameter. Pairs:

* save:    ``CheckpointManager.save`` (commit protocol: file, manifest, renames, all
           fsync'd) vs ``torch.save`` to an open file, flushed and ``os.fsync``'d;
* load:    ``CheckpointManager.restore()`` vs ``torch.load(weights_only=True)``: new
           tensors, nothing to fill;
* restore: ``restore(into=state)`` vs ``torch.load`` + ``load_state_dict`` on the
           model and the optimizer: a live training state put back.

Every variant runs in a fresh subprocess. Its peak memory is the peak RSS while it
runs minus the RSS before it starts (after the state is built): on Linux the peak
is reset through ``/proc/self/clear_refs`` first, elsewhere ``ru_maxrss`` is used.
Times are medians over ``--repeats``; loads read a warm page cache unless
``--cache cold``, which evicts the files (``posix_fadvise``) before each read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAIRS = {"save": ("torch_save", "ckpt_save"),
         "load": ("torch_load", "ckpt_load"),
         "restore": ("torch_restore", "ckpt_restore")}
LAYERS = 8
TORCH_FILE = "state.pt"
CKPT_DIR = "ckpt"


# ------------------------------------------------------------------ memory


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def reset_peak_rss() -> None:
    """Make the peak RSS start again from the current RSS (Linux; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def current_rss() -> int:
    """Resident bytes now; the peak so far where /proc is missing (a safe baseline)."""
    kib = _proc_status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_rss()


def peak_rss() -> int:
    """Peak resident bytes since start (or since :func:`reset_peak_rss`)."""
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ------------------------------------------------------------------- state


def build_state(params: int) -> dict[str, Any]:
    """An MLP with ~``params`` float32 parameters and a populated AdamW state.

    The optimizer state is filled as AdamW's first step would, with random values
    so that every page is really resident (zeros could stay unmapped).
    """
    import torch

    width = max(1, round(math.sqrt(params / LAYERS)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(LAYERS)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for param in model.parameters():
        optimizer.state[param] = {"step": torch.tensor(1.0),
                                  "exp_avg": torch.randn_like(param),
                                  "exp_avg_sq": torch.rand_like(param)}
    return {"model": model, "optimizer": optimizer}


def torch_payload(state: dict[str, Any]) -> dict[str, Any]:
    """What a torch user saves: the state dicts."""
    return {"model": state["model"].state_dict(),
            "optimizer": state["optimizer"].state_dict(), "step": 1}


# --------------------------------------------------------------- variants


def torch_save(directory: Path, state: dict[str, Any], step: int) -> None:
    import torch

    path = directory / TORCH_FILE
    with open(path, "wb") as handle:
        torch.save(torch_payload(state), handle)
        handle.flush()
        os.fsync(handle.fileno())  # ckpt fsyncs: so does this, for a fair comparison


def ckpt_save(directory: Path, state: dict[str, Any], step: int) -> None:
    import ckpt

    with ckpt.CheckpointManager(directory / CKPT_DIR) as manager:
        manager.save(step, {**state, "step": 1}, force=True)


def torch_load(directory: Path, state: Any, step: int) -> Any:
    import torch

    return torch.load(directory / TORCH_FILE, map_location="cpu", weights_only=True)


def ckpt_load(directory: Path, state: Any, step: int) -> Any:
    import ckpt

    return ckpt.CheckpointManager(directory / CKPT_DIR).restore()


def torch_restore(directory: Path, state: dict[str, Any], step: int) -> Any:
    loaded = torch_load(directory, None, step)
    state["model"].load_state_dict(loaded["model"])
    state["optimizer"].load_state_dict(loaded["optimizer"])
    return state


def ckpt_restore(directory: Path, state: dict[str, Any], step: int) -> Any:
    import ckpt

    return ckpt.CheckpointManager(directory / CKPT_DIR).restore(into={**state, "step": 1})


VARIANTS: dict[str, Callable[[Path, Any, int], Any]] = {
    f.__name__: f for f in (torch_save, ckpt_save, torch_load, ckpt_load, torch_restore,
                            ckpt_restore)}


def data_files(directory: Path, variant: str) -> list[Path]:
    """The files a variant reads or wrote."""
    if variant.startswith("torch"):
        return [directory / TORCH_FILE]
    return sorted((directory / CKPT_DIR).glob("step_*/*"))


def remove_outputs(directory: Path, variant: str) -> None:
    """Delete what an earlier save wrote, outside the timed region (as for a new file)."""
    if variant.startswith("torch"):
        (directory / TORCH_FILE).unlink(missing_ok=True)
    else:
        shutil.rmtree(directory / CKPT_DIR, ignore_errors=True)


def evict_from_page_cache(paths: list[Path]) -> None:
    """Drop these files' cached pages so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ worker


def run_worker(variant: str, directory: Path, params: int, repeats: int, cold: bool) -> dict:
    """Time one variant ``repeats`` times in this (fresh) process; report time and memory."""
    import torch

    import ckpt  # noqa: F401  (imported before the baseline, like torch)

    torch.set_num_threads(os.cpu_count() or 1)
    operation = VARIANTS[variant]
    needs_state = variant.endswith(("_save", "_restore"))
    state = build_state(params) if needs_state else None
    reset_peak_rss()
    baseline = current_rss()
    seconds = []
    for repeat in range(repeats):
        if variant.endswith("_save"):
            remove_outputs(directory, variant)
        elif cold:
            evict_from_page_cache(data_files(directory, variant))
        started = time.perf_counter()
        result = operation(directory, state, repeat + 1)
        seconds.append(time.perf_counter() - started)
        del result
    peak_extra = peak_rss() - baseline
    nbytes = sum(p.stat().st_size for p in data_files(directory, variant))
    return {"seconds": seconds, "peak_extra": peak_extra, "nbytes": nbytes,
            "baseline": baseline}


def spawn_worker(variant: str, args: argparse.Namespace, directory: Path) -> dict:
    command = [sys.executable, __file__, "--worker", variant, "--dir", str(directory),
               "--params", str(args.params), "--repeats", str(args.repeats),
               "--cache", args.cache]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------- table


def format_table(results: dict[str, dict], params: int) -> str:
    gib = 1024**3
    state_bytes = results["ckpt_save"]["nbytes"]
    lines = [f"state: {params / 1e6:.1f}M parameters + AdamW, "
             f"ckpt files {state_bytes / gib:.2f} GiB, "
             f"torch file {results['torch_save']['nbytes'] / gib:.2f} GiB",
             f"{'operation':<9} {'library':<6} {'median s':>9} {'min s':>7} {'GB/s':>6} "
             f"{'peak extra MiB':>15} {'time/torch':>11} {'mem/torch':>10}"]
    for pair, (torch_variant, ckpt_variant) in PAIRS.items():
        base = results[torch_variant]
        for library, variant in (("torch", torch_variant), ("ckpt", ckpt_variant)):
            entry = results[variant]
            median = statistics.median(entry["seconds"])
            ratio = median / statistics.median(base["seconds"])
            mem = entry["peak_extra"] / 2**20
            mem_ratio = entry["peak_extra"] / base["peak_extra"] if base["peak_extra"] else math.nan
            lines.append(f"{pair:<9} {library:<6} {median:>9.3f} {min(entry['seconds']):>7.3f} "
                         f"{entry['nbytes'] / median / 1e9:>6.2f} {mem:>15.1f} "
                         f"{ratio:>10.2f}x {mem_ratio:>9.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=lambda s: int(s.replace("_", "")),
                        default=100_000_000, help="model parameters (default 100M)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", choices=("warm", "cold"), default="warm",
                        help="page cache state for loads (cold: files evicted first)")
    parser.add_argument("--dir", help="scratch directory (default: a new one in /tmp)")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        report = run_worker(args.worker, Path(args.dir), args.params, args.repeats,
                            args.cache == "cold")
        print(json.dumps(report))
        return
    directory = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    try:
        results = {}
        # saves first: the loads read what the last save of each library wrote
        for variant in ("torch_save", "ckpt_save", "torch_load", "ckpt_load",
                        "torch_restore", "ckpt_restore"):
            results[variant] = spawn_worker(variant, args, directory)
            print(f"  {variant}: {[round(s, 3) for s in results[variant]['seconds']]} s",
                  file=sys.stderr, flush=True)
        print(f"cache: {args.cache}, repeats: {args.repeats}, cpus: {os.cpu_count()}")
        print(format_table(results, args.params))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
