"""Crash or fail on purpose at every step of the commit protocol and of pruning.

A child process arms one failpoint (``CKPT_FAILPOINT=name@N:mode``), saves steps
1..4 with ``KeepLast(2)`` and reports each step whose save returned. It dies there
(``kill``: SIGKILL) or gets an I/O error there (``eio``). Then a fresh manager must
list only complete checkpoints, have lost nothing that was committed, restore the
newest, and clean up leftovers on its next save.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import ckpt
from ckpt._failpoints import POINTS
from tests.conftest import ROOT
from tests.step_files import assert_listing_is_true

CHILD = r"""
import sys, numpy as np, ckpt
mgr = ckpt.CheckpointManager(sys.argv[1], keep=ckpt.KeepLast(2))
for step in range(1, 5):
    try:
        mgr.save(step, {"w": np.full(100_000, step, np.float32), "step": step})
    except ckpt.SaveError as error:
        print("error", error.errno, flush=True)
        continue
    print(step, flush=True)
"""

# Commit points are hit once per save: fire on the 3rd (steps 1 and 2 are committed by
# then). Pruning starts with step 3's save (KeepLast(2)): fire on its first hit.
PRUNE_POINTS = {p for p in POINTS if p.startswith(("prune.", "delete."))}
# The listing cache is written after the commit (and removed before pruning): its
# failure costs speed, never the save.
LISTING_POINTS = {p for p in POINTS if p.startswith("listing.")}


def arm(point: str) -> str:
    return f"{point}@{1 if point in PRUNE_POINTS | {'listing.removed'} else 3}"


def expected(step):
    return {"w": np.full(100_000, step, np.float32), "step": step}


@pytest.mark.parametrize("mode", ["kill", "eio"])
@pytest.mark.parametrize("point", POINTS)
def test_failpoint(tmp_path, point, mode):
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True,
        cwd=ROOT, timeout=120, env={**os.environ, "CKPT_FAILPOINT": f"{arm(point)}:{mode}"})
    lines = child.stdout.splitlines()
    committed = {int(x) for x in lines if x.isdigit()}
    if mode == "kill":
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert max(committed) < 4  # it died on the way
    else:
        assert child.returncode == 0, child.stderr
        failed = any(line.startswith("error") for line in lines)
        # a failed pruning step does not fail the save: the new step is committed
        assert failed == (point not in PRUNE_POINTS | LISTING_POINTS), (lines, child.stderr)

    assert_listing_is_true(tmp_path)  # whatever cache the child left is only a cache
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(2))
    steps = mgr.all_steps()
    # KeepLast(2) prunes older steps on purpose (the child may have committed a newer
    # step it did not live to report): the committed ones among the two newest stay
    must_have = set(sorted(committed | set(steps))[-2:]) & committed
    assert set(must_have) <= set(steps), f"lost committed steps {must_have}: {steps}"
    for step in steps:  # everything listed is complete and verifies
        got = mgr.restore(step)
        assert got["step"] == step and (got["w"] == step).all()
    assert mgr.restore()["step"] == max(steps)
    mgr.save(10, expected(10))
    names = os.listdir(tmp_path)
    assert not [n for n in names if n.startswith((".tmp", ".trash"))], names
    assert mgr.all_steps()[-1] == 10 and len(mgr.all_steps()) == 2
    assert_listing_is_true(tmp_path)


def test_every_failpoint_is_reached(tmp_path):
    """A failpoint that is never hit would make its test above prove nothing."""
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys, ckpt._failpoints as fp\n"
         "seen = []\n"
         "orig = fp.hit\n"
         "fp.hit = lambda name: (seen.append(name), orig(name))\n"
         "import ckpt, numpy as np\n"
         "m = ckpt.CheckpointManager(sys.argv[1], keep=ckpt.KeepLast(2))\n"
         "for s in range(1, 5): m.save(s, {'w': np.ones(100_000)})\n"
         "print(' '.join(sorted(set(seen))))\n",
         str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == set(POINTS)


def test_rlimit_fsize_is_a_clear_error_and_the_process_lives(tmp_path):
    code = r"""
import resource, sys, errno, numpy as np, ckpt
mgr = ckpt.CheckpointManager(sys.argv[1])
mgr.save(1, {"w": np.ones(10_000)})
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
try:
    mgr.save(2, {"w": np.ones(1_000_000)})
except ckpt.SaveError as error:
    assert error.errno == errno.EFBIG, error
    print("refused:", error)
print("alive", mgr.all_steps())
mgr.save(3, {"w": np.ones(10_000)})
print("saved", mgr.all_steps())
"""
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
    assert child.returncode == 0, child.stderr
    assert "file size limit" in child.stdout and "alive [1]" in child.stdout
    assert "saved [1, 3]" in child.stdout
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
