"""Incremental saves SIGKILLed: at random moments while saving, at the point where
the earlier steps' files are linked, and while pruning a step later steps share.

The checks of ``test_crash.py``: after each kill a fresh manager lists only complete
checkpoints, has lost nothing committed, restores and verifies every listed step;
the next writer leaves no temporary directory; and a rerun to the end gives the
checkpoint of a run that was never killed, bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import ckpt
from ckpt import inspection
from ckpt._failpoints import INCREMENTAL_POINTS, POINTS
from tests.conftest import ROOT, rounds
from tests.integration.test_crash import kill_loop

# The same few functions in the child and here: the frozen matrix never changes,
# the trained vector and the small leaves change every step.
STATE = r"""
import numpy as np
FROZEN = np.random.default_rng(7).standard_normal((1024, 1024)).astype(np.float32)
def state(step):
    return {"frozen": FROZEN, "trained": np.full(200_000, step, np.float32),
            "small": [np.full(10, step, np.int64), {"step": step}]}
"""
namespace: dict = {}
exec(STATE, namespace)  # noqa: S102 - the child's own definition, shared verbatim
expected_state = namespace["state"]

LOOP_CHILD = STATE + r"""
import sys, ckpt
mgr = ckpt.CheckpointManager(sys.argv[1], async_save=sys.argv[2] == "1", incremental=True)
step = (mgr.latest_step() or 0) + 1
print("ready", flush=True)
while True:
    mgr.save(step, state(step), metrics={"step": step})
    mgr.wait_until_finished()
    print(step, flush=True)   # reported only once the save has committed
    step += 1
"""

# steps up to LAST with KeepLast(2): from step 3 on each save prunes a step whose
# file (the frozen matrix) every later step links
LAST = 5
RUN_CHILD = STATE + r"""
import sys, ckpt
mgr = ckpt.CheckpointManager(sys.argv[1], keep=ckpt.KeepLast(2), incremental=True)
for step in range((mgr.latest_step() or 0) + 1, LAST + 1):
    mgr.save(step, state(step))
    print(step, flush=True)
""".replace("LAST", str(LAST))


def same_bits(a, b) -> bool:
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return type(a) is type(b) and a == b


def check_directory(directory, committed, verified, deleted=frozenset()):
    """Nothing committed lost; every listed step restores bit-identical and verifies."""
    mgr = ckpt.CheckpointManager(directory)
    steps = mgr.all_steps()
    lost = set(committed) - set(deleted) - set(steps)
    assert not lost, f"lost committed steps {lost}"
    for step in set(steps) - verified:
        assert same_bits(mgr.restore(step), expected_state(step)), step
        assert inspection.verify_step(directory, step).ok
        verified.add(step)  # a committed checkpoint never changes: check it once
    return mgr


def no_leftovers(directory) -> bool:
    return not [n for n in os.listdir(directory) if n.startswith((".tmp", ".trash"))]


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_sigkill_during_incremental_saves(tmp_path, async_save):
    # between kills the old steps are deleted, the ones whose files later steps link
    # among them
    committed, deleted, killed_mid_save = kill_loop(
        tmp_path, LOOP_CHILD, async_save, rounds(8, 400), check_directory, seed=4321, keep=3)
    mgr = check_directory(tmp_path, committed, set(), deleted)
    latest = mgr.latest_step() or 0
    ckpt.CheckpointManager(tmp_path, incremental=True).save(latest + 1,
                                                            expected_state(latest + 1))
    assert no_leftovers(tmp_path)
    assert same_bits(mgr.restore(), expected_state(latest + 1))
    assert len(committed) > 3, "the child should commit some steps between kills"
    assert killed_mid_save > 0, "no kill landed inside a save: the test proved nothing"


def run_child(directory, failpoint: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CKPT_FAILPOINT"}
    if failpoint is not None:
        env["CKPT_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-c", RUN_CHILD, str(directory)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)


PRUNE_POINTS = [p for p in POINTS if p.startswith(("prune.", "delete."))]


@pytest.mark.parametrize("point", [f"{p}@1" for p in PRUNE_POINTS]
                         + [f"{p}@2" for p in PRUNE_POINTS[:1]]
                         + [f"{p}@3" for p in INCREMENTAL_POINTS])
def test_sigkill_while_pruning_a_shared_step_or_linking(tmp_path, point):
    """Killed while step 1 (whose file every later step links) is being pruned, or
    right after an incremental save linked the earlier files; then rerun to LAST."""
    child = run_child(tmp_path, f"{point}:kill")
    assert child.returncode == -signal.SIGKILL, child.stderr
    committed = {int(line) for line in child.stdout.split()}
    # KeepLast(2) prunes on purpose (the child may have committed a step it did not
    # live to report): the committed ones among the two newest must be there
    listed = set(ckpt.CheckpointManager(tmp_path).all_steps())
    must_have = set(sorted(committed | listed)[-2:]) & committed
    check_directory(tmp_path, committed, set(), deleted=committed - must_have)
    assert all(result.ok for result in inspection.verify(tmp_path))
    rerun = run_child(tmp_path, None)
    assert rerun.returncode == 0, rerun.stderr
    assert no_leftovers(tmp_path)
    mgr = ckpt.CheckpointManager(tmp_path)
    assert mgr.all_steps() == [LAST - 1, LAST]
    for step in mgr.all_steps():  # as a run never killed would have left them
        assert same_bits(mgr.restore(step), expected_state(step))
        assert inspection.verify_step(tmp_path, step).ok
    assert os.path.exists(tmp_path / f"step_{LAST}" / "data.step1.h5")
