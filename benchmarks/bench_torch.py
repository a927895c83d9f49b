"""ckpt vs ``torch.save``/``torch.load`` on a full training state: model + AdamW.

    python benchmarks/bench_torch.py                  # GPT-2 124M (tied lm_head) + AdamW
    python benchmarks/bench_torch.py --model mlp --params 10_000_000 --repeats 3

The state is GPT-2 small (12 layers, width 768, vocabulary 50257, the output layer
tied to the token embedding: 124.4M parameters, built in plain torch) or, with
``--model mlp``, an 8-layer MLP with ``--params`` parameters; plus AdamW's state for
each parameter (``step``, ``exp_avg``, ``exp_avg_sq``): 12 bytes per parameter. Pairs:

* save:    ``CheckpointManager.save`` (commit protocol: file, manifest, renames, all
           fsync'd) vs ``torch.save`` to an open file, flushed and ``os.fsync``'d;
* load:    ``CheckpointManager.restore()`` vs ``torch.load(weights_only=True)``: new
           tensors, nothing to fill;
* restore: ``restore(into=state)`` vs ``torch.load`` + ``load_state_dict`` on the
           model and the optimizer: a live training state put back.

Every run of a variant is a fresh subprocess; the variants run ``--repeats`` rounds
in rotating order (saves first, so that the loads read what they wrote), because
this VM's lazily backed memory makes single runs noisy; medians are reported. Peak
memory is the peak RSS while it runs minus the RSS before it starts (after the state
is built): on Linux the peak is reset through ``/proc/self/clear_refs`` first,
elsewhere ``ru_maxrss`` is used. Loads read a warm page cache unless ``--cache
cold``, which evicts the files (``posix_fadvise``) before each read.
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


GPT2 = {"layers": 12, "width": 768, "vocab": 50257, "positions": 1024}


def build_gpt2() -> Any:
    """GPT-2 small's parameters (as Hugging Face names them), ``lm_head`` tied to ``wte``."""
    import torch
    from torch import nn

    width = GPT2["width"]

    def block() -> nn.Module:
        layer = nn.Module()
        layer.ln_1, layer.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        layer.attn, layer.mlp = nn.Module(), nn.Module()
        layer.attn.c_attn = nn.Linear(width, 3 * width)
        layer.attn.c_proj = nn.Linear(width, width)
        layer.mlp.c_fc = nn.Linear(width, 4 * width)
        layer.mlp.c_proj = nn.Linear(4 * width, width)
        return layer

    torch.manual_seed(0)
    model = nn.Module()
    model.wte = nn.Embedding(GPT2["vocab"], width)
    model.wpe = nn.Embedding(GPT2["positions"], width)
    model.h = nn.ModuleList(block() for _ in range(GPT2["layers"]))
    model.ln_f = nn.LayerNorm(width)
    model.lm_head = nn.Linear(width, GPT2["vocab"], bias=False)
    model.lm_head.weight = model.wte.weight
    return model


def build_state(params: int, kind: str = "gpt2") -> dict[str, Any]:
    """An MLP with ~``params`` float32 parameters and a populated AdamW state.

    The optimizer state is filled as AdamW's first step would, with random values
    so that every page is really resident (zeros could stay unmapped).
    """
    import torch

    if kind == "gpt2":
        model = build_gpt2()
    else:
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


def run_worker(variant: str, directory: Path, params: int, repeats: int, cold: bool,
               kind: str = "gpt2") -> dict:
    """Time one variant ``repeats`` times in this (fresh) process; report time and memory."""
    import torch

    import ckpt  # noqa: F401  (imported before the baseline, like torch)

    torch.set_num_threads(os.cpu_count() or 1)
    operation = VARIANTS[variant]
    needs_state = variant.endswith(("_save", "_restore"))
    state = build_state(params, kind) if needs_state else None
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
    state_bytes = 0
    if state is not None:
        tensors = {t.data_ptr(): t.nbytes for t in state["model"].state_dict().values()}
        for slots in state["optimizer"].state.values():
            tensors.update((t.data_ptr(), t.nbytes) for t in slots.values())
        state_bytes = sum(tensors.values())
    return {"seconds": seconds, "peak_extra": [peak_extra], "nbytes": nbytes,
            "baseline": baseline, "state_bytes": state_bytes}


def spawn_worker(variant: str, args: argparse.Namespace, directory: Path) -> dict:
    command = [sys.executable, __file__, "--worker", variant, "--dir", str(directory),
               "--params", str(args.params), "--repeats", "1", "--cache", args.cache,
               "--model", args.model]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------- table


def format_table(results: dict[str, dict], args: argparse.Namespace) -> str:
    gib = 1024**3
    state_bytes = max(r["state_bytes"] for r in results.values())
    what = ("GPT-2 124M (tied)" if args.model == "gpt2"
            else f"MLP {args.params / 1e6:.1f}M parameters")
    lines = [f"state: {what} + AdamW, {state_bytes / gib:.2f} GiB in memory, "
             f"ckpt files {results['ckpt_save']['nbytes'] / gib:.2f} GiB, "
             f"torch file {results['torch_save']['nbytes'] / gib:.2f} GiB",
             f"{'operation':<9} {'library':<6} {'median s':>9} {'min s':>7} {'GB/s':>6} "
             f"{'peak extra MiB':>15} {'extra/state':>12} {'time/torch':>11}"]
    for pair, (torch_variant, ckpt_variant) in PAIRS.items():
        base = results[torch_variant]
        for library, variant in (("torch", torch_variant), ("ckpt", ckpt_variant)):
            entry = results[variant]
            median = statistics.median(entry["seconds"])
            ratio = median / statistics.median(base["seconds"])
            extra = statistics.median(entry["peak_extra"])
            lines.append(f"{pair:<9} {library:<6} {median:>9.3f} {min(entry['seconds']):>7.3f} "
                         f"{entry['nbytes'] / median / 1e9:>6.2f} {extra / 2**20:>15.1f} "
                         f"{extra / state_bytes:>11.1%} {ratio:>10.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=lambda s: int(s.replace("_", "")),
                        default=100_000_000, help="model parameters (default 100M)")
    parser.add_argument("--model", choices=("gpt2", "mlp"), default="gpt2",
                        help="GPT-2 124M with a tied lm_head, or an MLP of --params")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds over all variants, in rotating order")
    parser.add_argument("--cache", choices=("warm", "cold"), default="warm",
                        help="page cache state for loads (cold: files evicted first)")
    parser.add_argument("--dir", help="scratch directory (default: a new one in /tmp)")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        report = run_worker(args.worker, Path(args.dir), args.params, args.repeats,
                            args.cache == "cold", args.model)
        print(json.dumps(report))
        return
    directory = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    try:
        results: dict[str, dict] = {}
        saves = ["torch_save", "ckpt_save"]
        reads = ["torch_load", "ckpt_load", "torch_restore", "ckpt_restore"]
        for round_number in range(args.repeats):
            # rotate, so that no variant always runs first (or after the same one)
            for group in (saves, reads):
                shift = round_number % len(group)
                for variant in group[shift:] + group[:shift]:
                    _merge(results, variant, spawn_worker(variant, args, directory))
            print(f"  round {round_number + 1}: " + ", ".join(
                f"{v} {results[v]['seconds'][-1]:.3f}" for v in saves + reads),
                file=sys.stderr, flush=True)
        print(f"cache: {args.cache}, rounds: {args.repeats}, cpus: {os.cpu_count()}")
        print(format_table(results, args))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _merge(results: dict[str, dict], variant: str, report: dict) -> None:
    if variant not in results:
        results[variant] = report
        return
    results[variant]["seconds"] += report["seconds"]
    results[variant]["peak_extra"] += report["peak_extra"]
    results[variant]["nbytes"] = report["nbytes"]


if __name__ == "__main__":
    main()
