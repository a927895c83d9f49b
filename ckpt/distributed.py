"""ckpt's collectives in a ``torch.distributed`` job: bytes between ranks, with a timeout.

The first piece of distributed saving (issue 13): every rank must agree on where a
step is written, what each rank wrote and whether all of them succeeded, and a rank
that died must turn into an error on the others, never a hang. So ckpt runs its own
few collectives on a *gloo* group it creates from the job's process group (CPU
only, whatever backend the training uses) with a timeout of its own.

Why not ``broadcast_object_list``/``all_gather_object``: they pickle, and ckpt never
unpickles. Bytes travel as uint8 tensors, lengths first.
"""

from __future__ import annotations

import datetime
from typing import Any

from ckpt.errors import CheckpointError

__all__ = ["Collective", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 600.0  # seconds a rank waits for the others in one collective


class Collective:
    """ckpt's collectives over the job's ``torch.distributed`` process group.

    Build it on every rank at the same point (creating the group is a collective).
    ``timeout`` bounds every later call: when a rank dies or stalls, the others
    raise :class:`~ckpt.CheckpointError` after that long instead of waiting for ever.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise CheckpointError("ckpt's distributed mode needs torch.distributed "
                                  "initialized (init_process_group, e.g. under torchrun)")
        self._torch, self._dist = torch, dist
        self.timeout = float(timeout)
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.group = dist.new_group(backend="gloo",
                                    timeout=datetime.timedelta(seconds=self.timeout))

    def _run(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, group=self.group, **kwargs)
        except (RuntimeError, ValueError) as error:  # gloo's timeout and peer-closed errors
            raise CheckpointError(
                f"rank {self.rank} of {self.size}: ckpt's {what} failed after at most "
                f"{self.timeout:g} s (another rank died, stalled or failed): "
                f"{str(error).splitlines()[0][:300]}") from None

    def barrier(self) -> None:
        """Wait until every rank is here."""
        self._run("barrier", self._dist.barrier)

    def all_gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, indexed by rank."""
        torch = self._torch
        length = torch.tensor([len(data)], dtype=torch.int64)
        lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        self._run("all-gather (sizes)", self._dist.all_gather, lengths, length)
        sizes = [int(n.item()) for n in lengths]
        longest = max(sizes)
        mine = torch.zeros(longest, dtype=torch.uint8)
        if data:
            mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buffers = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.size)]
        self._run("all-gather", self._dist.all_gather, buffers, mine)
        return [bytes(buffer[:size].numpy()) for buffer, size in zip(buffers, sizes)]

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        """``data`` of rank ``src`` on every rank (the others pass None)."""
        torch = self._torch
        length = torch.tensor([len(data) if self.rank == src else 0], dtype=torch.int64)
        self._run("broadcast (size)", self._dist.broadcast, length, src)
        buffer = torch.zeros(int(length.item()), dtype=torch.uint8)
        if self.rank == src and data:
            buffer[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if buffer.numel():
            self._run("broadcast", self._dist.broadcast, buffer, src)
        return bytes(buffer.numpy())

    def all_ok(self, ok: bool) -> bool:
        """True on every rank when ``ok`` is true on every rank (one rank's failure is
        everyone's, so that no rank commits alone or waits for a commit that won't come)."""
        torch = self._torch
        flag = torch.tensor([1 if ok else 0], dtype=torch.int64)
        self._run("agreement", self._dist.all_reduce, flag, op=self._dist.ReduceOp.MIN)
        return bool(flag.item())

    def close(self) -> None:
        """Destroy ckpt's group (before the job destroys its own process group)."""
        if self.group is not None:
            self._dist.destroy_process_group(self.group)
            self.group = None
