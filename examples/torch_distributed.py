"""FSDP2 training under torchrun with ckpt: sharded saves, one commit, exact resume.

    torchrun --nproc_per_node 2 examples/torch_distributed.py ckpts-fsdp

Run it again after killing it (or after SIGTERM to any rank): it resumes after the
newest checkpoint. Every rank runs the same code; save and restore are collectives.
"""

import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import ckpt

dist.init_process_group("gloo")  # torchrun's env://; "nccl" on GPUs works the same
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
for layer in model:
    if isinstance(layer, torch.nn.Linear):
        fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

mgr = ckpt.CheckpointManager(sys.argv[1], save_every=50, keep=ckpt.KeepLast(2))
state = {"model": model, "optim": optimizer, "step": 0}
with ckpt.TrainingLoop(mgr, state, total_steps=200) as loop:
    for step in loop:  # starts after the newest checkpoint
        generator = torch.Generator().manual_seed(step * 1000 + rank)  # this rank's batch
        x = torch.randn(16, 32, generator=generator)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state["step"] = step
if rank == 0:
    print(mgr.all_steps(), "resumed from", loop.resumed_from)  # [150, 200] resumed from None
mgr.close()
dist.destroy_process_group()
