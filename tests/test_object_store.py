"""CheckpointManager and the object-store commit protocol on a real S3 server.

The server is moto in server mode on 127.0.0.1, started by the ``s3_server``
fixture (``tests/s3_server.py``); each test gets a fresh bucket (``s3``). Crash
tests run the writer in a child process armed with a failpoint of
``ckpt._failpoints.REMOTE_POINTS``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

import ckpt
from ckpt import manifest
from ckpt._failpoints import REMOTE_POINTS
from ckpt.storage import remote, transfer
from tests.conftest import ROOT, assert_tree_equal
from tests.integration.test_concurrency import RACING_READER


def state_of(step: int, n: int = 50_000) -> dict:
    """A small state whose every leaf says which step it is."""
    return {"model": {"w": np.full((n,), step, np.float32), "b": np.arange(7) + step},
            "opt": {"lr": 0.1 * step, "moments": [np.full(100, -step, np.float64)]},
            "step": step}


def manager(s3, **kwargs) -> ckpt.CheckpointManager:
    return ckpt.CheckpointManager(s3.url, storage_options=s3.options, **kwargs)


def step_objects(s3) -> dict[str, list[str]]:
    """``{top-level name under run/: [object names below it]}``."""
    out: dict[str, list[str]] = {}
    for name in s3.objects("run"):
        top, _, rest = name[len(s3.name) + len("/run/"):].partition("/")
        out.setdefault(top, []).append(rest)
    return out


def unfinished_uploads(s3) -> list[str]:
    page = s3.fs.call_s3("list_multipart_uploads", Bucket=s3.name)
    return [upload["Key"] for upload in page.get("Uploads", [])]


def test_the_server_is_on_loopback_and_the_bucket_starts_empty(s3):
    assert urlsplit(s3.server.endpoint).hostname == "127.0.0.1"
    assert s3.objects() == []
    s3.fs.pipe_file(f"{s3.name}/probe", b"x")
    assert s3.objects() == [f"{s3.name}/probe"]


def test_save_list_restore_keys_and_into(s3):
    mgr = manager(s3)
    assert mgr.all_steps() == [] and mgr.latest_step() is None  # nothing there yet
    for step in (1, 2, 3):
        assert mgr.save(step, state_of(step), metrics={"loss": 1 / step})
    # a second manager (no cache) lists what the first wrote, from the store alone
    fresh = manager(s3)
    assert fresh.all_steps() == [1, 2, 3] and fresh.latest_step() == 3
    assert fresh.info(2).metrics == {"loss": 0.5}
    assert_tree_equal(fresh.restore(), state_of(3))
    assert fresh.last_restored_step == 3
    assert_tree_equal(fresh.restore(2, keys=["opt"]), {"opt": state_of(2)["opt"]})
    template = state_of(0)
    weights = template["model"]["w"]
    restored = fresh.restore(1, into=template)
    assert restored["model"]["w"] is weights and (weights == 1).all()  # filled in place
    assert restored["opt"]["lr"] == pytest.approx(0.1)
    assert sorted(step_objects(s3)) == ["step_1", "step_2", "step_3"]
    assert step_objects(s3)["step_1"] == ["manifest.json", "state.h5"]


def test_retention_keep_last_and_keep_best_remove_every_object_of_a_pruned_step(s3):
    losses = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.7, 5: 0.6}
    mgr = manager(s3, keep=ckpt.KeepLast(2) | ckpt.KeepBest("val_loss"))
    for step, loss in losses.items():
        mgr.save(step, state_of(step), metrics={"val_loss": loss})
    assert mgr.all_steps() == [2, 4, 5]
    assert mgr.best_step() == 2
    assert sorted(step_objects(s3)) == ["step_2", "step_4", "step_5"]  # data gone too
    only_last = manager(s3, keep=ckpt.KeepLast(1))
    only_last.save(6, state_of(6))
    assert only_last.all_steps() == [6] and sorted(step_objects(s3)) == ["step_6"]


def test_delete_removes_the_step_and_a_missing_one_is_named(s3):
    mgr = manager(s3)
    mgr.save(1, state_of(1))
    mgr.save(2, state_of(2))
    mgr.delete(1)
    assert mgr.all_steps() == [2] and sorted(step_objects(s3)) == ["step_2"]
    with pytest.raises(ckpt.CheckpointNotFoundError, match=f"{s3.url}/step_1"):
        mgr.delete(1)
    with pytest.raises(ckpt.CheckpointNotFoundError, match=f"{s3.url}/step_7"):
        mgr.restore(7)


def test_a_saved_step_is_refused_again(s3):
    mgr = manager(s3)
    mgr.save(4, state_of(4))
    with pytest.raises(ckpt.StepExistsError, match=f"{s3.url}/step_4"):
        mgr.save(4, state_of(5))
    assert_tree_equal(mgr.restore(4), state_of(4))


def test_two_managers_racing_one_step_commit_exactly_once(s3):
    managers = [manager(s3), manager(s3)]
    outcomes: list = [None, None]
    start = threading.Barrier(2)

    def save(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = managers[i].save(9, state_of(10 + i))
        except ckpt.StepExistsError as error:
            outcomes[i] = error

    threads = [threading.Thread(target=save, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, outcome in enumerate(outcomes) if outcome is True]
    assert len(winners) == 1, outcomes
    assert isinstance(outcomes[1 - winners[0]], ckpt.StepExistsError)
    assert_tree_equal(manager(s3).restore(9), state_of(10 + winners[0]))


def test_the_conditional_create_stops_a_second_writer_that_bypasses_the_lease(s3):
    """Two writers of one step outside the lease (the contract broken): the store's
    If-None-Match refuses the second one's data and its manifest; the first commits."""
    store = ckpt.storage.open_store(s3.url, s3.options)
    first, second = (store.begin_step(s3.url, "step_5") for _ in range(2))
    payload = [(0, b"first")]
    first.write_file("state.h5", 5, payload)
    with pytest.raises(ckpt.StepExistsError, match="step 5 already exists"):
        second.write_file("state.h5", 6, [(0, b"second")])
    first.commit(b'{"who": "first"}')
    with pytest.raises(ckpt.StepExistsError):
        second.commit(b'{"who": "second"}')
    second.abort()  # removes nothing: it created nothing
    run = f"{s3.name}/run/step_5"
    assert s3.fs.cat_file(f"{run}/state.h5") == b"first"
    assert s3.fs.cat_file(f"{run}/manifest.json") == b'{"who": "first"}'


def test_async_save_uploads_in_the_background(s3):
    mgr = manager(s3, async_save=True)
    other = manager(s3)
    weights = np.zeros(200_000, np.float32)
    lease_held, release = threading.Event(), threading.Event()

    def hold_lease() -> None:
        with other.store.writer_lock(other.root, timeout=10):
            lease_held.set()
            release.wait(20)

    holder = threading.Thread(target=hold_lease)
    holder.start()
    lease_held.wait(10)
    try:
        mgr.save(1, {"w": weights})  # staged; the upload waits for the lease
        weights += 5  # changed at once: the checkpoint holds the values of the call
        assert mgr.all_steps() == [] and "step_1" not in step_objects(s3)
    finally:
        release.set()
        holder.join()
    mgr.wait_until_finished()
    assert mgr.all_steps() == [1]
    assert (mgr.restore(1)["w"] == 0).all()
    mgr.close()


def flip_byte(s3, step: int, offset: int) -> None:
    path = f"{s3.name}/run/step_{step}/state.h5"
    data = bytearray(s3.fs.cat_file(path))
    data[offset] ^= 0xFF
    s3.fs.pipe_file(path, bytes(data))


def test_a_damaged_object_is_refused_and_restore_falls_back(s3):
    mgr = manager(s3)
    mgr.save(1, state_of(1))
    mgr.save(2, state_of(2))
    step_dir = f"{s3.url}/step_2"
    _, index = manifest.open_data(step_dir, 2, manifest.read(step_dir, 2))
    weights = next(e for e in index["leaves"] if e["path"] == ["model", "w"])
    flip_byte(s3, 2, weights["offset"] + 1000)
    with pytest.raises(ckpt.CorruptCheckpointError, match="model/w") as failed:
        mgr.restore(2)
    assert f"{s3.url}/step_2/state.h5" in str(failed.value)
    # a restore of other leaves never reads the damaged bytes (ranged reads)
    assert_tree_equal(mgr.restore(2, keys=["opt"]), {"opt": state_of(2)["opt"]})
    with pytest.warns(UserWarning, match="skipping step 2"):
        assert_tree_equal(mgr.restore(), state_of(1))
    assert mgr.last_restored_step == 1


def test_reads_merge_nearby_ranges_and_cut_large_ones_into_pieces(monkeypatch):
    monkeypatch.setattr(transfer, "READ_BYTES", 100)
    monkeypatch.setattr(transfer, "MERGE_GAP", 10)
    buffers = [memoryview(bytearray(n)) for n in (30, 5, 250, 4)]
    ranges = [(0, buffers[0]), (35, buffers[1]), (45, buffers[2]), (1000, buffers[3])]
    pieces = transfer.plan_reads(ranges)
    # 0..295 in one span (gaps of 5 and 5 bytes are read through), cut at 100 and 200
    assert [(lo, hi) for lo, hi, _ in pieces] == [(0, 100), (100, 200), (200, 295),
                                                  (1000, 1004)]
    assert [len(targets) for _, _, targets in pieces] == [3, 1, 1, 1]


def test_a_restore_in_many_small_ranged_reads_is_exact(s3, monkeypatch):
    """Pieces far smaller than the leaves: every byte lands in its buffer once."""
    mgr = manager(s3)
    state = {f"a{i}": np.random.default_rng(i).standard_normal(20_000 + i) for i in range(4)}
    mgr.save(1, state)
    monkeypatch.setattr(transfer, "READ_BYTES", 7_000)  # not a multiple of anything
    monkeypatch.setattr(transfer, "STREAM_CHUNK", 1_000)
    assert_tree_equal(mgr.restore(1), state)
    assert_tree_equal(mgr.restore(1, keys=["a2"]), {"a2": state["a2"]})


def test_a_missing_bucket_is_a_clear_error_naming_the_location(s3):
    mgr = ckpt.CheckpointManager(f"s3://{s3.name}-missing/run", storage_options=s3.options)
    assert mgr.all_steps() == []
    with pytest.raises(ckpt.SaveError, match=f"{s3.name}-missing/run"):
        mgr.save(1, state_of(1))
    with pytest.raises(ckpt.CheckpointNotFoundError, match=f"{s3.name}-missing/run"):
        mgr.restore()


def test_single_file_save_and_load_on_a_url(s3):
    url = f"s3://{s3.name}/models/weights.h5"
    ckpt.storage.open_store(f"s3://{s3.name}", s3.options)
    ckpt.save(url, state_of(1), metadata={"epoch": 3})
    assert_tree_equal(ckpt.load(url), state_of(1))
    assert ckpt.load_metadata(url) == {"epoch": 3}
    assert_tree_equal(ckpt.load(url, keys=[("model", "b")]), {"model": {"b": np.arange(7) + 1}})
    template = state_of(0)
    ckpt.load(url, into=template)
    assert (template["model"]["w"] == 1).all()
    ckpt.save(url, state_of(2))  # replaces the object (one PUT: the old or the new, whole)
    assert_tree_equal(ckpt.load(url), state_of(2))
    assert s3.objects("models") == [f"{s3.name}/models/weights.h5"]  # no temporary object


def test_single_file_errors_on_a_url_name_the_location(s3):
    ckpt.storage.open_store(f"s3://{s3.name}", s3.options)
    with pytest.raises(ckpt.CheckpointNotFoundError, match=f"s3://{s3.name}/missing.h5"):
        ckpt.load(f"s3://{s3.name}/missing.h5")
    s3.fs.pipe_file(f"{s3.name}/plain.h5", b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(ckpt.CheckpointError, match=f"s3://{s3.name}/plain.h5 .*local paths only"):
        ckpt.load(f"s3://{s3.name}/plain.h5")
    s3.fs.pipe_file(f"{s3.name}/models/x", b"")
    with pytest.raises(ckpt.CorruptCheckpointError, match="not a regular file"):
        ckpt.load(f"s3://{s3.name}/models")  # a prefix, not an object


# ------------------------------------------------------------ crashes

CHILD = r"""
import json, sys, numpy as np, ckpt
from ckpt.storage import transfer
transfer.PART_BYTES = 5 * 2**20  # S3's smallest part: step 3 is a multipart upload of 3 parts
mgr = ckpt.CheckpointManager(sys.argv[1], storage_options=json.loads(sys.argv[2]),
                             keep=ckpt.KeepLast(2))
for step in (1, 2, 3):
    n = 3_000_000 if step == 3 else 10_000
    try:
        mgr.save(step, {"w": np.full(n, step, np.float32), "step": step})
    except ckpt.SaveError as error:
        print("error", error.errno, flush=True)
        continue
    print(step, flush=True)
"""

# Each point fires during step 3's save (commit points are hit once a save; parts
# only in step 3; pruning starts with step 3's save): (arming, steps listed after).
ARMED = {
    "lock.acquired": ("lock.acquired@3", [1, 2]),
    "data.before_write": ("data.before_write@3", [1, 2]),
    "data.part_written": ("data.part_written@2", [1, 2]),  # mid-upload
    "data.after_write": ("data.after_write@3", [1, 2]),
    "manifest.before_write": ("manifest.before_write@3", [1, 2]),
    "commit.after_manifest": ("commit.after_manifest@3", [1, 2, 3]),
    "prune.after_manifest_removed": ("prune.after_manifest_removed@1", [2, 3]),
}


def run_child(s3, spec: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, s3.url, json.dumps(s3.options)], capture_output=True,
        text=True, cwd=ROOT, timeout=120, env={**s3.server.env, "CKPT_FAILPOINT": spec})


def test_every_remote_point_has_a_crash_case():
    assert set(ARMED) == set(REMOTE_POINTS)


@pytest.mark.parametrize("point", REMOTE_POINTS)
def test_a_writer_killed_at_a_point_leaves_no_visible_partial_step(s3, point):
    spec, listed = ARMED[point]
    child = run_child(s3, f"{spec}:kill")
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert [int(x) for x in child.stdout.split()] == [1, 2]
    left = step_objects(s3)
    assert left[".ckpt.lease"] == [""]  # the dead writer's lease is still there
    if point in ("data.after_write", "manifest.before_write"):
        assert left["step_3"] == ["state.h5"]  # data without a manifest: invisible
    if point == "data.part_written":
        assert unfinished_uploads(s3) == ["run/step_3/state.h5"]  # parts, no object
    if point == "prune.after_manifest_removed":
        assert left["step_1"] == ["state.h5"]

    mgr = manager(s3, keep=ckpt.KeepLast(2), lock_timeout=20)
    assert mgr.all_steps() == listed
    for step in listed:  # everything listed is complete and verifies
        got = mgr.restore(step)
        assert got["step"] == step and (got["w"] == step).all()
    started = time.monotonic()
    mgr.save(10, {"w": np.full(10, 10.0), "step": 10})  # the dead pid's lease is stale
    assert time.monotonic() - started < remote.LEASE_SECONDS / 2
    assert mgr.all_steps() == [listed[-1], 10]
    left = step_objects(s3)
    assert set(left) == {f"step_{listed[-1]}", "step_10"}, left  # no lease, no leftovers
    assert all(names == ["manifest.json", "state.h5"] for names in left.values()), left
    assert unfinished_uploads(s3) == []


@pytest.mark.parametrize("point", ["data.part_written", "data.after_write",
                                   "manifest.before_write"])
def test_a_failed_upload_is_a_save_error_and_removes_what_it_wrote(s3, point):
    spec, _ = ARMED[point]
    child = run_child(s3, f"{spec}:eio")
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["1", "2", "error", "5"]
    assert sorted(step_objects(s3)) == ["step_1", "step_2"]  # lease released, step 3 gone
    assert unfinished_uploads(s3) == []
    assert manager(s3).all_steps() == [1, 2]


REACHED = r"""
import json, sys, numpy as np, ckpt._failpoints as fp
seen = []
orig = fp.hit
fp.hit = lambda name: (seen.append(name), orig(name))
import ckpt
from ckpt.storage import transfer
transfer.PART_BYTES = 5 * 2**20
mgr = ckpt.CheckpointManager(sys.argv[1], storage_options=json.loads(sys.argv[2]),
                             keep=ckpt.KeepLast(1))
for step in (1, 2):
    mgr.save(step, {"w": np.ones(3_000_000, np.float32)})
print(" ".join(sorted(set(seen))))
"""


def test_every_remote_failpoint_is_reached(s3):
    """A failpoint never hit on S3 would make its crash case above prove nothing."""
    child = subprocess.run([sys.executable, "-c", REACHED, s3.url, json.dumps(s3.options)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env=s3.server.env)
    assert child.returncode == 0, child.stderr
    assert set(child.stdout.split()) == set(REMOTE_POINTS)


# ---------------------------------------------------------- concurrency

def test_a_reader_racing_a_keep_last_1_writer_never_sees_no_checkpoint(s3):
    seconds = 6
    writer = manager(s3, keep=ckpt.KeepLast(1))
    writer.save(0, {"step": 0, "w": np.zeros(1000)})  # from here on a step is committed
    # the local race's reader (manager and `ckpt ls` listings), finding S3 through AWS_*
    reader = subprocess.Popen(
        [sys.executable, "-c", RACING_READER, s3.url, str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**s3.server.env, "PYTHONWARNINGS": "error"})  # a skipped step fails it
    step = 0
    while reader.poll() is None:
        step += 1
        writer.save(step, {"step": step, "w": np.full(1000, step)})
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    reads, empty_latest, empty_list, not_found = map(int, out.split())
    print(f"{reads} reader rounds against {step} saves in {seconds} s")
    assert reads > 5 and step > 10  # both really ran, each reader round across saves
    assert (empty_latest, empty_list, not_found) == (0, 0, 0)


def test_a_lease_held_by_a_live_writer_times_out(s3):
    holder = manager(s3)
    waiting = manager(s3, lock_timeout=0.5)
    with holder.store.writer_lock(holder.root, timeout=5):
        with pytest.raises(ckpt.LockTimeoutError, match=f"{s3.url}/.ckpt.lease"):
            waiting.save(1, state_of(1))
    assert waiting.save(1, state_of(1)) and waiting.all_steps() == [1]


def test_nothing_is_left_in_the_bucket_but_steps(s3):
    """The lease is released after a save; no object outside ``step_<N>/`` remains."""
    mgr = manager(s3, keep=ckpt.KeepLast(1))
    for step in range(3):
        mgr.save(step, state_of(step))
    assert step_objects(s3) == {"step_2": ["manifest.json", "state.h5"]}


def test_a_server_without_bulk_delete_or_upload_listing(tmp_path):
    """localbucket (a real S3 server in the test extra) has neither DeleteObjects nor
    ListMultipartUploads: pruning deletes object by object and the leftover cleanup
    skips the upload listing, instead of failing every save."""
    import s3fs

    from tests.s3_server import start_server

    with open(tmp_path / "log", "w+") as log:
        server = start_server(log, "localbucket", str(tmp_path / "data"))
        try:
            fs = s3fs.S3FileSystem(**server.options, skip_instance_cache=True)
            fs.mkdir("plain")
            with pytest.raises(OSError) as bulk:  # what the fallback is for
                fs.rm(["plain/a", "plain/b"])
            assert bulk.value.errno == 38
            fs.pipe_file("plain/run/step_9/state.h5", b"left by a killed writer")
            mgr = ckpt.CheckpointManager("s3://plain/run", storage_options=server.options,
                                         keep=ckpt.KeepLast(1))
            for step in (1, 2, 3):
                assert mgr.save(step, state_of(step))
            assert mgr.all_steps() == [3]
            fs.invalidate_cache()
            assert sorted(fs.find("plain/run")) == ["plain/run/step_3/manifest.json",
                                                    "plain/run/step_3/state.h5"]
            assert_tree_equal(mgr.restore(), state_of(3))
        finally:
            server.process.kill()
            server.process.wait()
