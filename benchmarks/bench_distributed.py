"""Sharded save and restore on a real gloo job: ckpt against torch's DCP, in one run.

Every rank holds the same FSDP2 (``fully_shard``) model, sharded over the job, and
its AdamW state after one step: ``--mib`` MiB of parameters, three times that with
the optimizer's two slots. Variants, in rotating order, ``--repeat`` times each:

- ``ckpt save``: ``CheckpointManager.save`` (every rank writes its shards, checksums
  and fsync on, one commit); ``dcp save``: ``dcp.save`` with ``FileSystemWriter``
  (its default ``sync_files=True``) of the same ``get_state_dict`` state;
- ``ckpt restore`` / ``dcp load`` of the step into the live model and optimizer;
- ``ckpt async``: the time ``save`` blocks with ``async_save=True``; ``dcp async``:
  the time ``dcp.async_save`` blocks (until its staging is done). Each is then
  waited for, untimed, before the next variant.

Every timed call starts with a barrier and ends when the slowest rank is done (a
barrier after it, timed). Figures are rank 0's medians; throughput is the state's
bytes over that time; ratios are DCP time / ckpt time (above 1: ckpt is faster).

    python benchmarks/bench_distributed.py [--ranks 2] [--mib 128] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: argparse.Namespace) -> None:
    port = str(free_port())
    work = tempfile.mkdtemp(prefix="bench-dist-", dir=args.dir)
    try:
        processes = [subprocess.Popen(
            [sys.executable, __file__, "--rank", str(rank), "--ranks", str(args.ranks),
             "--mib", str(args.mib), "--repeat", str(args.repeat), "--dir", work],
            env={**os.environ, "PORT": port, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE, text=True) for rank in range(args.ranks)]
        outputs = [p.communicate()[0] for p in processes]
        if any(p.returncode for p in processes):
            raise SystemExit(f"a rank failed: {[p.returncode for p in processes]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(json.loads(outputs[0].splitlines()[-1]), args)


def report(times: dict, args: argparse.Namespace) -> None:
    nbytes = times.pop("nbytes")
    print(f"{args.ranks} ranks, FSDP2 state of {nbytes / 2**20:.0f} MiB "
          f"(params + AdamW), medians of {args.repeat}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"  {name:13s} {seconds * 1000:8.1f} ms  {nbytes / seconds / 2**30:6.2f} GiB/s")
    for ours, theirs in (("ckpt save", "dcp save"), ("ckpt restore", "dcp load"),
                         ("ckpt async", "dcp async")):
        print(f"  {ours} vs {theirs}: {medians[theirs] / medians[ours]:.2f}x "
              f"(DCP time / ckpt time)")


def rank_main(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from _timing import timed  # benchmarks/ is on sys.path when run as a script
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import ckpt

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + os.environ["PORT"],
                            rank=args.rank, world_size=args.ranks)
    mesh = init_device_mesh("cpu", (args.ranks,))
    width = 2048
    layers = max(1, args.mib * 2**20 // (width * width * 4))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()
    nbytes = 3 * sum(p.numel() * 4 for p in model.parameters())

    manager = ckpt.CheckpointManager(os.path.join(args.dir, "ckpt"))
    async_manager = ckpt.CheckpointManager(os.path.join(args.dir, "ckpt-async"),
                                           async_save=True)
    state = {"model": model, "optim": optimizer}
    counter = iter(range(1, 10**6))

    def dcp_state() -> dict:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def dcp_dir(number: int) -> str:
        return os.path.join(args.dir, "dcp", str(number))

    last_dcp = [0]

    def ckpt_save() -> None:
        manager.save(next(counter), state, force=True)

    def dcp_save() -> None:
        last_dcp[0] = number = next(counter)
        dcp.save(dcp_state(), checkpoint_id=dcp_dir(number))

    def ckpt_restore() -> None:
        manager.restore(into=state)

    def dcp_load() -> None:
        loaded = dcp_state()
        dcp.load(loaded, checkpoint_id=dcp_dir(last_dcp[0]))
        set_state_dict(model, optimizer, model_state_dict=loaded["model"],
                       optim_state_dict=loaded["optim"])

    pending = []

    def ckpt_async() -> None:
        async_manager.save(next(counter), state, force=True)

    def dcp_async() -> None:
        number = next(counter)
        pending.append(dcp.async_save(dcp_state(), checkpoint_id=dcp_dir(number)))

    def settle() -> None:  # untimed: the background halves finish before the next variant
        async_manager.wait_until_finished()
        while pending:
            pending.pop().result()
        for path in (os.path.join(args.dir, "ckpt"), os.path.join(args.dir, "ckpt-async")):
            for step in ckpt.CheckpointManager(path, distributed=False).all_steps()[:-1]:
                if args.rank == 0:
                    shutil.rmtree(os.path.join(path, f"step_{step}"), ignore_errors=True)
        if args.rank == 0 and os.path.isdir(os.path.join(args.dir, "dcp")):
            for name in os.listdir(os.path.join(args.dir, "dcp")):
                if name != str(last_dcp[0]):
                    shutil.rmtree(dcp_dir(int(name)), ignore_errors=True)
        dist.barrier()

    variants = {"ckpt save": ckpt_save, "dcp save": dcp_save, "ckpt restore": ckpt_restore,
                "dcp load": dcp_load, "ckpt async": ckpt_async, "dcp async": dcp_async}
    ckpt_save()
    dcp_save()  # restores need a step of each; warm-up of both paths
    settle()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_number in range(args.repeat):
        for name in names[round_number % len(names):] + names[:round_number % len(names)]:
            dist.barrier()
            run = variants[name]
            times[name].append(timed(lambda run=run: (run(), dist.barrier())))
            settle()
    manager.close()
    async_manager.close()
    dist.destroy_process_group()
    if args.rank == 0:
        print(json.dumps({**times, "nbytes": nbytes}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--mib", type=int, default=128, help="MiB of parameters")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the checkpoints go")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is None:
        launch(args)
    else:
        rank_main(args)


if __name__ == "__main__":
    main()
