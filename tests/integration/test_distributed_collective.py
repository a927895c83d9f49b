"""ckpt's own collectives on real multi-process gloo jobs (issue 13, first piece):
bytes of any size between ranks without pickle, one agreement, and a dead rank
turning into a ``CheckpointError`` on the others within the timeout, not a hang."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("torch.distributed")

from tests.conftest import ROOT  # noqa: E402

RANK_SCRIPT = r"""
import json, os, sys, time
import torch.distributed as dist
import ckpt
from ckpt.distributed import Collective

rank, size, how = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), sys.argv[1]
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + os.environ["PORT"],
                        rank=rank, world_size=size)
coll = Collective(timeout=float(sys.argv[2]))
if how == "exchange":
    mine = bytes([rank]) * (rank * 100_003)          # rank 0 sends nothing
    gathered = coll.all_gather_bytes(mine)
    sent = coll.broadcast_bytes(b"tmp-location-" + b"\xff\x00" * 50 if rank == 0 else None)
    agreed = coll.all_ok(rank != size - 1)           # the last rank says no
    everyone = coll.all_ok(True)
    coll.barrier()
    print(json.dumps({"sizes": [len(g) for g in gathered],
                      "right": all(g == bytes([r]) * (r * 100_003) for r, g in enumerate(gathered)),
                      "sent": sent.hex(), "agreed": agreed, "everyone": everyone}), flush=True)
    coll.close()
    dist.destroy_process_group()
elif how == "die":
    if rank == 1:
        os._exit(3)                                   # dies before the collective
    started = time.monotonic()
    try:
        coll.all_gather_bytes(b"x")
    except ckpt.CheckpointError as error:
        print(json.dumps({"error": str(error), "seconds": time.monotonic() - started}),
              flush=True)
    # torch's gloo teardown aborts ("terminate called") when a peer died: not ours
    os._exit(0)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_job(size: int, how: str, timeout: float) -> list[subprocess.CompletedProcess]:
    port = str(free_port())
    processes = [subprocess.Popen(
        [sys.executable, "-c", RANK_SCRIPT, how, str(timeout)], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "RANK": str(rank), "WORLD_SIZE": str(size), "PORT": port})
        for rank in range(size)]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.parametrize("size", [2, 3])
def test_bytes_move_between_ranks_and_one_no_is_everyones(size):
    results = run_job(size, "exchange", timeout=60)
    for rank, result in enumerate(results):
        assert result.returncode == 0, (rank, result.stderr[-2000:])
        seen = json.loads(result.stdout.strip().splitlines()[-1])
        assert seen["sizes"] == [r * 100_003 for r in range(size)]
        assert seen["right"]
        assert bytes.fromhex(seen["sent"]) == b"tmp-location-" + b"\xff\x00" * 50
        assert seen["agreed"] is False and seen["everyone"] is True


def test_a_dead_rank_is_an_error_on_the_others_within_the_timeout():
    started = time.monotonic()
    results = run_job(2, "die", timeout=5)
    assert results[1].returncode == 3
    assert results[0].returncode == 0, results[0].stderr[-2000:]
    seen = json.loads(results[0].stdout.strip().splitlines()[-1])
    assert "rank 0 of 2: ckpt's all-gather" in seen["error"]
    assert "another rank died" in seen["error"]
    assert seen["seconds"] < 30 and time.monotonic() - started < 90
