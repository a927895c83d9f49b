"""Real processes SIGKILLed at random moments while saving in a loop.

After each kill a fresh manager must list only complete checkpoints, hold every
step the child reported as committed, restore and verify the latest, and leave no
temporary directory after its next save.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

import ckpt
from tests.conftest import kill_after_ready, rounds

CHILD = r"""
import sys, numpy as np, ckpt
directory, async_save = sys.argv[1], sys.argv[2] == "1"
mgr = ckpt.CheckpointManager(directory, async_save=async_save)
step = (mgr.latest_step() or 0) + 1
print("ready", flush=True)
while True:
    state = {"big": np.full((3, 400_000), step, np.float32),
             "small": [np.full(10, step, np.int64), {"step": step, "name": f"s{step}"}]}
    mgr.save(step, state, metrics={"step": step})
    if async_save:
        mgr.wait_until_finished()
    print(step, flush=True)   # reported only once the save has committed
    step += 1
"""


def expected_state(step):
    return {"big": np.full((3, 400_000), step, np.float32),
            "small": [np.full(10, step, np.int64), {"step": step, "name": f"s{step}"}]}


def check_directory(directory, committed, verified, deleted=frozenset()):
    mgr = ckpt.CheckpointManager(directory)
    steps = mgr.all_steps()
    lost = set(committed) - set(deleted) - set(steps)
    assert not lost, f"lost committed steps {lost}"
    for step in set(steps) - verified:  # every listed checkpoint is complete and verifies
        state = mgr.restore(step)
        assert state["small"][1]["step"] == step
        assert (state["big"] == step).all()
        verified.add(step)  # a committed checkpoint never changes: check it once
    return mgr


def kill_loop(directory, child, async_save, count, check, *, seed=1234, keep=5):
    """SIGKILL ``child`` (which saves in a loop, printing each committed step) at
    random moments ``count`` times, ``check(directory, committed, verified,
    deleted)`` after each kill; returns ``(committed, deleted, kills inside a save)``."""
    rng = random.Random(seed + async_save)
    committed: list[int] = []
    verified: set[int] = set()
    deleted: set[int] = set()
    killed_mid_save = 0
    for _ in range(count):
        out = kill_after_ready(["-c", child, str(directory), "1" if async_save else "0"],
                               rng.uniform(0.0, 0.4))
        committed += [int(line) for line in out.split()]
        killed_mid_save += any(n.startswith(".tmp") for n in os.listdir(directory))
        mgr = check(directory, committed, verified, deleted)
        # Bound the disk a long soak uses: once verified, old steps may go (by the
        # test, with the child dead); "nothing lost" is then checked for the rest.
        for step in mgr.all_steps()[:-keep]:
            mgr.delete(step)
            deleted.add(step)
    return committed, deleted, killed_mid_save


def kill_rounds(tmp_path, async_save, count):
    committed, deleted, killed_mid_save = kill_loop(tmp_path, CHILD, async_save, count,
                                                    check_directory)
    mgr = check_directory(tmp_path, committed, set(), deleted)
    latest = mgr.latest_step()
    if latest is not None:
        restored = mgr.restore()
        assert restored["small"][1]["step"] == latest
    # the next save removes what the killed writers left behind
    mgr.save((latest or 0) + 1, expected_state((latest or 0) + 1))
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith((".tmp", ".trash"))]
    assert leftovers == []
    return committed, killed_mid_save


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_sigkill_during_save_loses_nothing_committed(tmp_path, async_save):
    committed, killed_mid_save = kill_rounds(tmp_path, async_save, rounds(20, 1000))
    assert len(committed) > 5, "the child should commit some steps between kills"
    assert killed_mid_save > 0, "no kill landed inside a save: the test proved nothing"
