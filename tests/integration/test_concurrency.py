"""Several processes on one directory: writers serialize on the lock, readers never
see a partial checkpoint."""

from __future__ import annotations

import subprocess
import sys
import time

import filelock
import numpy as np
import pytest

import ckpt
from tests.conftest import ROOT, rounds

WRITER = r"""
import sys, numpy as np, ckpt
directory, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mgr = ckpt.CheckpointManager(directory)
for step in range(first, first + count):
    mgr.save(step, {"w": np.full(300_000, step, np.float64), "step": step})
"""


def test_two_writers_at_once_do_not_corrupt_each_other(tmp_path):
    children = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(first), "15"],
                                 cwd=ROOT) for first in (0, 100)]
    for child in children:
        assert child.wait(timeout=120) == 0
    mgr = ckpt.CheckpointManager(tmp_path)
    assert mgr.all_steps() == list(range(15)) + list(range(100, 115))
    for step in mgr.all_steps():
        state = mgr.restore(step)
        assert state["step"] == step and (state["w"] == step).all()


def test_writer_waits_for_the_lock_or_times_out(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, lock_timeout=0.3)
    holder = filelock.FileLock(str(tmp_path / ".ckpt.lock"))
    holder.acquire()
    try:
        # filelock locks are per open file: another handle in this process blocks too
        started = time.monotonic()
        with pytest.raises(ckpt.LockTimeoutError) as info:
            mgr.save(1, {"x": 1})
        assert time.monotonic() - started >= 0.25
        assert ".ckpt.lock" in str(info.value) and isinstance(info.value, TimeoutError)
        assert mgr.all_steps() == []
    finally:
        holder.release()
    assert mgr.save(1, {"x": 1}) and mgr.all_steps() == [1]


HOLDER = r"""
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1]); lock.acquire()
print("held", flush=True); time.sleep(float(sys.argv[2]))
"""


def test_waiting_writer_proceeds_when_the_other_process_releases(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / ".ckpt.lock"), "1.0"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    ckpt.CheckpointManager(tmp_path).save(1, {"x": np.ones(3)})
    assert time.monotonic() - started > 0.5  # it waited for the other process
    holder.wait()


READER = r"""
import sys, time, ckpt
mgr = ckpt.CheckpointManager(sys.argv[1])
seen, deadline = 0, time.time() + float(sys.argv[2])
while time.time() < deadline:
    for step in mgr.all_steps():
        try:
            state = mgr.restore(step)
        except ckpt.CheckpointNotFoundError:
            continue    # pruned by the writer under us: move on
        assert state["step"] == step and (state["w"] == step).all(), step
        seen += 1
print(seen)
"""


def test_readers_never_see_partial_checkpoints_while_a_writer_prunes(tmp_path):
    ckpt.CheckpointManager(tmp_path).save(0, {"w": np.zeros(300_000), "step": 0})
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(tmp_path), "4"],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    writer = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(2))
    deadline = time.time() + 4
    step = 1
    while time.time() < deadline:
        writer.save(step, {"w": np.full(300_000, step, np.float64), "step": step})
        step += 1
    for reader in readers:
        out, _ = reader.communicate(timeout=60)
        assert reader.returncode == 0 and int(out) > 0


EVALUATOR = r"""
import sys, ckpt
mgr = ckpt.CheckpointManager(sys.argv[1])
restored, pruned, last = 0, 0, -1
for step in mgr.new_steps(timeout=float(sys.argv[2]), poll_interval=0.01):
    assert step > last, (step, last)   # new steps arrive in order, each once
    last = step
    try:
        state = mgr.restore(step)
    except ckpt.CheckpointNotFoundError:
        pruned += 1                     # pruned under us: report and move on
        continue
    assert state["step"] == step and (state["w"] == step).all(), step
    restored += 1
print(restored, pruned, last)
"""


def test_evaluator_polls_new_steps_while_the_writer_saves_and_prunes(tmp_path):
    evaluator = subprocess.Popen([sys.executable, "-c", EVALUATOR, str(tmp_path), "3"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=ROOT)
    writer = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(1))
    for step in range(60):
        writer.save(step, {"w": np.full(200_000, step, np.float64), "step": step})
    out, err = evaluator.communicate(timeout=120)
    assert evaluator.returncode == 0, err
    restored, pruned, last = map(int, out.split())
    assert restored > 0 and last == 59


def test_wait_for_new_step(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    started = time.monotonic()
    assert mgr.wait_for_new_step(timeout=0.2, poll_interval=0.05) is None
    assert time.monotonic() - started >= 0.2
    mgr.save(3, {"x": 1})
    assert mgr.wait_for_new_step(timeout=0.2) == 3
    assert mgr.wait_for_new_step(after=3, timeout=0.1, poll_interval=0.02) is None
    assert list(mgr.new_steps(after=1, timeout=0.1, poll_interval=0.02)) == [3]


RACING_READER = r"""
import sys, time, ckpt
from ckpt import inspection
mgr = ckpt.CheckpointManager(sys.argv[1])
rounds = empty_latest = empty_list = not_found = 0
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    rounds += 1
    if mgr.latest_step() is None:
        empty_latest += 1
    if not mgr.all_steps():
        empty_list += 1
    # what `ckpt ls` and `ckpt show DIR` list (no manager, no cache)
    if not [row for row in inspection.list_steps(sys.argv[1]) if row.error is None]:
        empty_list += 1
    try:
        inspection.latest_step(sys.argv[1])
    except ckpt.CheckpointNotFoundError:
        empty_latest += 1
    try:
        state = mgr.restore()
    except ckpt.CheckpointNotFoundError:
        not_found += 1
    else:
        assert state["step"] == mgr.last_restored_step, (state["step"], mgr.last_restored_step)
print(rounds, empty_latest, empty_list, not_found)
"""


def test_a_reader_racing_a_keep_last_1_writer_never_sees_an_empty_directory(tmp_path):
    """Issue 11, item 7: a listing that races the commit and the prune renames must
    not miss both names. 30 s with CKPT_SOAK=1."""
    seconds = rounds(5, 30)
    writer = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(1))
    writer.save(0, {"step": 0})  # from here on there is always a committed step
    reader = subprocess.Popen([sys.executable, "-c", RACING_READER, str(tmp_path), str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT)
    step = 0
    while reader.poll() is None:
        step += 1
        writer.save(step, {"step": step})
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    reads, empty_latest, empty_list, not_found = map(int, out.split())
    print(f"{reads} reader rounds against {step} saves in {seconds} s")
    assert reads > 100 and step > 100  # both really ran
    assert (empty_latest, empty_list, not_found) == (0, 0, 0)
