"""The listing cache (``.ckpt-listing``) under SIGKILL and concurrent writers.

The cache may be stale or missing, never wrong: a fresh manager must list exactly
what reading every manifest lists, and every info it gives must be the one of the
checkpoint on disk. The writers here delete steps and save the same step numbers
again (new contents, new metrics) on purpose: that is what a stale record would
get wrong.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import numpy as np

import ckpt
from ckpt import manifest
from tests.conftest import ROOT, kill_after_ready, rounds
from tests.step_files import assert_listing_is_true

# Saves steps 1.. with KeepLast(4); every third save it first deletes one of the kept
# steps and saves that number again with a new generation. Reports after each call.
WRITER = r"""
import random, sys, numpy as np, ckpt
directory, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
mgr = ckpt.CheckpointManager(directory, keep=ckpt.KeepLast(4))
gen = int(sys.argv[3])
step = (mgr.latest_step() or 0) + 1
print("ready", flush=True)
while True:
    gen += 1
    steps = mgr.all_steps()
    if gen % 3 == 0 and len(steps) > 1:
        again = rng.choice(steps[:-1])
        print("del", again, flush=True)
        mgr.delete(again)
        target = again
    else:
        target, step = step, step + 1
    mgr.save(target, {"gen": np.full(1000, gen, np.int64)}, metrics={"gen": gen}, force=True)
    print("saved", target, gen, flush=True)
"""


def check(directory, events):
    assert_listing_is_true(directory)
    mgr = ckpt.CheckpointManager(directory)
    for info in mgr.infos():  # the listed info is the one of the data on disk
        state = mgr.restore(info.step)
        assert (state["gen"] == info.metrics["gen"]).all(), info
    last = {}
    for event in events:
        if event[0] == "del":
            last[int(event[1])] = None
        else:
            last[int(event[1])] = int(event[2])
    newest = max((s for s, g in last.items() if g is not None), default=None)
    if newest is not None:  # KeepLast never deletes the newest step
        assert newest in mgr.all_steps()
        assert mgr.info(newest).metrics["gen"] >= last[newest]


def test_sigkill_while_the_cache_is_rewritten_leaves_a_listing_the_manifests_agree_with(
        tmp_path):
    rng = random.Random(15)
    gen = cached = 0
    for round_number in range(rounds(12, 300)):
        out = kill_after_ready(["-c", WRITER, str(tmp_path), str(round_number), str(gen)],
                               rng.uniform(0.05, 0.4))
        # a line the kill cut short says nothing sure: only complete lines count
        lines = out.splitlines() if out.endswith("\n") else out.splitlines()[:-1]
        events = [line.split() for line in lines]
        gen += 10_000  # generations stay unique across rounds
        cached += (tmp_path / ".ckpt-listing").exists()
        check(tmp_path, events)
    assert cached > 0, "no round left a cache behind: the test proved nothing"


READER = r"""
import sys, time, ckpt
from ckpt import manifest
directory, seconds = sys.argv[1], float(sys.argv[2])
kept = ckpt.CheckpointManager(directory)
checked = rounds = 0
deadline = time.monotonic() + seconds
def gen_on_disk(step):
    try:
        return manifest.read(f"{directory}/step_{step}", step)["metrics"]["gen"]
    except (ckpt.CheckpointError, FileNotFoundError):
        return None
while time.monotonic() < deadline:
    rounds += 1
    for mgr in (kept, ckpt.CheckpointManager(directory)):   # in-process records, and none
        before = {s: gen_on_disk(s) for s in range(1, 40)}
        listed = {i.step: i.metrics["gen"] for i in mgr.infos()}
        for step, gen in listed.items():
            after = gen_on_disk(step)
            # the same generation before and after: the listing must have said it too
            if after is not None and before.get(step) == after:
                assert gen == after, (step, gen, after)
                checked += 1
print(rounds, checked)
"""


def test_a_reader_never_lists_what_a_concurrent_writer_replaced(tmp_path):
    """A writer deletes steps and saves their numbers again while a reader compares
    every listed info with the manifest read just before and just after."""
    seconds = rounds(4, 30)
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(4))
    mgr.save(1, {"gen": np.full(1000, 0, np.int64)}, metrics={"gen": 0})
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path), str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT)
    rng, gen, step = random.Random(11), 0, 1
    while reader.poll() is None:
        gen += 1
        steps = mgr.all_steps()
        if gen % 2 == 0 and len(steps) > 1:
            target = rng.choice(steps[:-1])
            mgr.delete(target)
        else:
            step += 1
            target = step
        mgr.save(target, {"gen": np.full(1000, gen, np.int64)}, metrics={"gen": gen},
                 force=True)
        if step > 30:
            for old in mgr.all_steps():
                mgr.delete(old)
            step = 1
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    reads, checked = map(int, out.split())
    print(f"{reads} reader rounds, {checked} infos checked, {gen} writer operations")
    assert reads > 10 and checked > 100 and gen > 50  # both really ran
    assert_listing_is_true(tmp_path)
    assert manifest.read(str(tmp_path / f"step_{target}"), target)["metrics"]["gen"] == gen


KILLED_DELETE = r"""
import sys, numpy as np, ckpt
mgr = ckpt.CheckpointManager(sys.argv[1])
for step in (1, 2, 3):
    mgr.save(step, {"gen": np.full(10, step, np.int64)}, metrics={"gen": step})
print("saved", flush=True)
mgr.delete(2)  # CKPT_FAILPOINT kills it once step_2 is gone, before the cache is rewritten
"""


def test_a_writer_killed_between_a_deletion_and_the_cache_rewrite(tmp_path):
    """The step number is then saved again with other contents: no record of the
    old step may describe the new one (the old cache is removed before the deletion,
    and a record also needs its manifest's stat to match)."""
    for point in ("listing.removed", "delete.after"):
        directory = tmp_path / point
        child = subprocess.run([sys.executable, "-c", KILLED_DELETE, str(directory)],
                               capture_output=True, text=True, cwd=ROOT, timeout=120,
                               env={**os.environ, "CKPT_FAILPOINT": f"{point}@1:kill"})
        assert child.returncode == -signal.SIGKILL and child.stdout == "saved\n", child.stderr
        mgr = ckpt.CheckpointManager(directory)
        assert mgr.all_steps() == [1, 3] if point == "delete.after" else [1, 2, 3]
        if point == "delete.after":
            mgr.save(2, {"gen": np.full(10, 99, np.int64)}, metrics={"gen": 99})
        assert_listing_is_true(directory)
        expected = [1, 99, 3] if point == "delete.after" else [1, 2, 3]
        for reader in (mgr, ckpt.CheckpointManager(directory)):  # this writer's and a fresh one
            assert [info.metrics["gen"] for info in reader.infos()] == expected
