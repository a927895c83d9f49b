"""Async saving: save() blocks only for a memory copy; errors are never lost."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

import ckpt
from tests.conftest import run_python


def test_values_as_of_the_call_despite_in_place_updates(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, async_save=True)
    weights = np.zeros((512, 1024), np.float32)
    scalars = {"count": np.int64(0), "items": [np.arange(10)]}
    for step in range(5):
        weights[:] = step
        scalars["items"][0][:] = step
        mgr.save(step, {"w": weights, "s": scalars})
        weights += 100  # changed at once, while the write may still be running
        scalars["items"][0] += 100
    mgr.wait_until_finished()
    for step in range(5):
        state = mgr.restore(step)
        assert (state["w"] == step).all() and (state["s"]["items"][0] == step).all()
    mgr.close()


def test_staging_buffers_are_reused_across_saves(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, async_save=True)
    state = {"a": np.ones((256, 256)), "b": np.ones(1000, np.float32)}
    mgr.save(1, state)
    mgr.wait_until_finished()
    first = {id(b) for bufs in mgr._writer._pool._free.values() for b in bufs}
    mgr.save(2, state)
    mgr.wait_until_finished()
    second = {id(b) for bufs in mgr._writer._pool._free.values() for b in bufs}
    assert first == second and len(first) == 2
    assert mgr._writer.staging_nbytes == state["a"].nbytes + state["b"].nbytes
    mgr.close()


def test_save_returns_before_the_write_is_done(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, async_save=True)
    gate = threading.Event()
    commit = mgr._writer._commit

    def slow_commit(*args):
        gate.wait(10)
        commit(*args)

    mgr._writer._commit = slow_commit
    mgr.save(1, {"x": np.ones(10)})
    assert mgr.all_steps() == []  # staged, not yet committed
    gate.set()
    mgr.wait_until_finished()
    assert mgr.all_steps() == [1]


def test_background_disk_full_surfaces_on_the_next_call(small_disk):
    mgr = ckpt.CheckpointManager(small_disk / "ckpts", async_save=True)
    mgr.save(1, {"w": np.ones(100_000)})  # 0.8 MB: fits
    mgr.wait_until_finished()
    mgr.save(2, {"w": np.ones(1_000_000)})  # 8 MB: cannot fit in 4 MiB
    with pytest.raises(ckpt.SaveError) as info:
        mgr.save(3, {"w": np.ones(10)})
    assert info.value.errno == errno.ENOSPC and "disk is full" in str(info.value)
    assert "step 2" in str(info.value)
    # the failed save left nothing visible; the older one is intact; saving works again
    assert mgr.all_steps() == [1]
    assert not [n for n in os.listdir(small_disk / "ckpts") if n.startswith(".tmp")]
    assert (mgr.restore(1)["w"] == 1).all()
    mgr.save(4, {"w": np.ones(10)})
    mgr.wait_until_finished()
    assert mgr.all_steps() == [1, 4]
    mgr.save(5, {"w": np.ones(1_000_000)})
    with pytest.raises(ckpt.SaveError):
        mgr.wait_until_finished()
    mgr.save(6, {"w": np.ones(1_000_000)})
    with pytest.raises(ckpt.SaveError):
        mgr.close()


def test_interpreter_exit_without_close_keeps_the_pending_checkpoint(tmp_path):
    result = run_python(
        "import sys, numpy as np, ckpt\n"
        "mgr = ckpt.CheckpointManager(sys.argv[1], async_save=True)\n"
        "mgr.save(7, {'w': np.full(20_000_000, 7, np.float32)})\n"
        "print(mgr.all_steps())\n",  # script ends here with the save still running
        str(tmp_path))
    assert result.stdout.strip() == "[]"  # it was still pending when the script ended
    mgr = ckpt.CheckpointManager(tmp_path)
    assert mgr.all_steps() == [7]
    assert (mgr.restore(7)["w"] == 7).all()


def test_sync_save_on_full_disk_is_a_clear_error_and_nothing_is_lost(small_disk):
    mgr = ckpt.CheckpointManager(small_disk)
    mgr.save(1, {"w": np.ones(100_000)})
    with pytest.raises(ckpt.SaveError) as info:
        mgr.save(2, {"w": np.ones(1_000_000)})
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert mgr.all_steps() == [1] and (mgr.restore()["w"] == 1).all()
    mgr.delete(1)
    mgr.save(2, {"w": np.ones(300_000)})  # space freed: saving works again
    assert mgr.all_steps() == [2]


def test_large_state_staged_on_several_threads_keeps_values_as_of_the_call(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, async_save=True)
    big = np.arange(20_000_000, dtype=np.float32)  # 80 MB: copied in chunks, in parallel
    mgr.save(1, {"big": big, "tail": big[-5:].copy()})
    big *= -1
    mgr.close()
    restored = mgr.restore(1)["big"]
    assert restored[0] == 0 and restored[-1] == 19_999_999 and restored[12_345_678] == 12_345_678
    assert np.array_equal(restored, np.arange(20_000_000, dtype=np.float32))


def test_existing_step_is_refused_at_the_call_not_in_the_background(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, async_save=True)
    mgr.save(1, {"x": 1})
    mgr.wait_until_finished()
    with pytest.raises(ckpt.StepExistsError):
        mgr.save(1, {"x": 2})
    mgr.close()
