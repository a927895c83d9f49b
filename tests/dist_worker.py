"""One rank of a real ``torch.distributed`` (gloo, CPU) job for the distributed tests.

Run as ``python -m tests.dist_worker MODE DIR KIND [TOTAL]`` with ``RANK``,
``WORLD_SIZE`` and ``PORT`` in the environment (one process per rank, started by
the test). KIND is ``ddp``, ``fsdp`` (FSDP2 ``fully_shard``) or ``plain`` (no
wrapper). Modes:

- ``train``: train TOTAL steps, saving every ``SAVE_EVERY`` (env, default 2), resuming
  from the newest checkpoint first; at the end rank 0 writes the full model and
  optimizer state (gathered) to ``DIR/final.h5`` with ``ckpt.save``.
- ``restore``: build a fresh model and optimizer, restore the newest step into them,
  and write the full state to ``DIR/restored-<world>.h5``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.distributed as dist

import ckpt

# WIDE=1: a first layer of 128 KiB, whose weight and Adam slots are "large" leaves
WIDTH, HIDDEN = (128, 256) if os.environ.get("WIDE") else (16, 37)


def build(kind: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(WIDTH, HIDDEN), torch.nn.Dropout(0.2),
                                torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 5))
    if kind == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    elif kind == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return model, optimizer


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(8, WIDTH, generator=generator), torch.randn(8, 5, generator=generator)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
               rank: int) -> None:
    x, y = batch(step, rank)
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def dump_final(directory: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               rank: int) -> None:
    """Rank 0 writes the gathered full state to ``DIR/final.h5`` (all ranks gather)."""
    out = full_state(model, optimizer)
    if rank == 0:
        ckpt.save(os.path.join(directory, "final.h5"), out)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    return {"model": get_model_state_dict(model, options=options),
            "optim": get_optimizer_state_dict(model, optimizer, options=options)}


def main() -> None:
    mode, directory, kind = sys.argv[1:4]
    torch.use_deterministic_algorithms(True)  # here, not at import: tests import build()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + os.environ["PORT"],
                            rank=rank, world_size=size)
    model, optimizer = build(kind)
    mgr = ckpt.CheckpointManager(directory, save_every=int(os.environ.get("SAVE_EVERY", 2)),
                                 keep=ckpt.KeepLast(2),
                                 timeout=float(os.environ.get("CKPT_TIMEOUT", 60)),
                                 distributed=True if os.environ.get("FORCE_DIST") else None)
    state = {"model": model, "optim": optimizer, "step": 0, "rng": ckpt.RNGState()}
    if mode == "train":
        total = int(sys.argv[4])
        if mgr.latest_step() is not None:
            mgr.restore(into=state)
            print(json.dumps({"rank": rank, "resumed": state["step"]}), flush=True)
        delay = float(os.environ.get("STEP_DELAY", 0))
        try:
            for step in range(state["step"] + 1, total + 1):
                train_step(model, optimizer, step, rank)
                state["step"] = step
                mgr.save(step, state)
                time.sleep(delay)
        except ckpt.CheckpointError as error:
            print(json.dumps({"rank": rank, "error": str(error)}), flush=True)
            os._exit(7)  # torch's gloo teardown aborts when a peer died: not ours
        dump_final(directory, model, optimizer, rank)
    elif mode == "loop":  # TrainingLoop, async saves when ASYNC=1
        total = int(sys.argv[4])
        mgr.close()
        mgr = ckpt.CheckpointManager(directory, save_every=2, keep=ckpt.KeepLast(2),
                                     async_save=bool(os.environ.get("ASYNC")))
        delay = float(os.environ.get("STEP_DELAY", 0))
        with ckpt.TrainingLoop(mgr, state, total_steps=total) as loop:
            for step in loop:
                train_step(model, optimizer, step, rank)
                state["step"] = step
                time.sleep(delay)
        print(json.dumps({"rank": rank, "preempted": loop.preempted,
                          "last_saved": loop.last_saved, "resumed": loop.resumed_from}),
              flush=True)
        if not loop.preempted:
            dump_final(directory, model, optimizer, rank)
    elif mode == "restore":
        mgr.restore(into=state)
        out = full_state(model, optimizer)
        if rank == 0:
            ckpt.save(os.path.join(directory, f"restored-{size}.h5"), {**out,
                                                                      "step": state["step"]})
    mgr.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
