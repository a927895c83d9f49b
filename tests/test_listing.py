"""Listing many checkpoints (issue 15): newest-first ``latest_step``, pruning that
reads only the manifests it needs, and the listing cache that stays a cache."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.policies import StepInfo, decides_by_step, retained_steps


def clone_steps(directory: Path, steps: list[int]) -> None:
    """Step directories for ``steps`` made by copying one real checkpoint and
    rewriting its manifest's step, time and metric (a real save each would take
    seconds for the thousands of steps these tests need)."""
    seed = directory / ".seed"
    ckpt.CheckpointManager(seed).save(0, {"w": np.arange(4.0)}, metrics={"loss": 1.0})
    record = json.loads((seed / "step_0" / "manifest.json").read_bytes())
    for step in steps:
        target = directory / f"step_{step}"
        shutil.copytree(seed / "step_0", target)
        record.update(step=step, time=1.7e9 + step, metrics={"loss": 1.0 / (step + 1)})
        (target / "manifest.json").write_text(json.dumps(record, separators=(",", ":")))
    shutil.rmtree(seed)


def damage(directory: Path, step: int) -> None:
    (directory / f"step_{step}" / "manifest.json").write_text("{not json")


def test_latest_step_skips_damaged_newest_steps(tmp_path):
    clone_steps(tmp_path, [1, 2, 3, 4])
    damage(tmp_path, 4)
    damage(tmp_path, 3)
    mgr = ckpt.CheckpointManager(tmp_path)
    assert mgr.latest_step() == 2 and mgr.all_steps() == [1, 2]


POLICIES = [ckpt.KeepLast(1), ckpt.KeepLast(3), ckpt.KeepEvery(steps=4), ckpt.KeepAll(),
            ckpt.KeepLast(2) | ckpt.KeepEvery(steps=5)]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_pruning_by_step_deletes_what_pruning_over_every_manifest_deletes(tmp_path, policy):
    """The reading-few path must agree with the policy over all valid manifests,
    damaged steps (never deleted, never counted as kept) included."""
    assert decides_by_step(policy)
    rng = random.Random(repr(policy))
    for trial in range(4):
        directory = tmp_path / str(trial)
        steps = sorted(rng.sample(range(40), 14))
        clone_steps(directory, steps)
        damaged = set(rng.sample(steps[:-1], 4))  # the newest stays valid: the new save
        for step in damaged:
            damage(directory, step)
        valid = [StepInfo(step=s, time=0.0) for s in steps if s not in damaged]
        expected = retained_steps(policy, valid) | damaged
        mgr = ckpt.CheckpointManager(directory, keep=policy)
        mgr._prune()
        on_disk = {int(p.name[5:]) for p in directory.glob("step_*")}
        assert on_disk == expected, (steps, damaged)


def test_policies_that_need_manifests_are_not_decided_by_step():
    assert not decides_by_step(ckpt.KeepBest("loss"))
    assert not decides_by_step(ckpt.KeepEvery(seconds=5))
    assert not decides_by_step(ckpt.KeepLast(2) | ckpt.KeepBest("loss"))

    class Mine(ckpt.KeepLast):
        pass

    assert not decides_by_step(Mine(2))  # a subclass may decide otherwise


def test_the_cache_lists_steps_it_lacks_and_is_rewritten_when_it_lacks_many(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(0, {"x": 0}, metrics={"m": 0})
    cache = tmp_path / ".ckpt-listing"
    first = cache.read_bytes()
    for step in range(1, 11):  # a few new steps: the file stays, readers read them
        mgr.save(step, {"x": step}, metrics={"m": step})
    assert cache.read_bytes() == first
    fresh = ckpt.CheckpointManager(tmp_path)
    assert [i.metrics["m"] for i in fresh.infos()] == list(range(11))
    for step in range(11, 80):
        mgr.save(step, {"x": step}, metrics={"m": step})
    assert cache.read_bytes() != first  # more than 64 missing: rewritten
    assert [i.metrics["m"] for i in ckpt.CheckpointManager(tmp_path).infos()] == list(range(80))


def _with_valid_checksum(body: bytes, count: int, version: bytes = b"2") -> bytes:
    import xxhash

    return (b"ckpt-listing " + version + b" 0 " + str(count).encode() + b" "
            + xxhash.xxh3_64_hexdigest(body).encode() + b"\n" + body)


def _details_replaced(data: bytes, details: bytes) -> bytes:
    """The cache file ``data`` with its columns (6 x 8 bytes a record) kept, its
    details replaced, and a valid checksum."""
    header, body = data.split(b"\n", 1)
    count = int(header.split(b" ")[3])
    return _with_valid_checksum(body[: 48 * count] + details, count)


@pytest.mark.parametrize("damage_cache", [
    lambda data: data[: len(data) // 2],                            # torn
    lambda data: b"\0" * len(data),                                 # zeroed by a crash
    lambda data: b"garbage\n" + data,                               # not ours
    lambda data: _with_valid_checksum(b"\0" * 40, 3),               # fewer bytes than records
    lambda data: _with_valid_checksum(b"\0" * 40, -1),              # a negative count
    lambda data: _details_replaced(data, b"{}"),                     # details not ours
    lambda data: _details_replaced(data, b"[1]\n[2]"),               # too few details
    lambda data: _with_valid_checksum(b"[[1],[1],[1],[1],[1]]\n{}", 1, b"1"),  # version 1
], ids=["torn", "zeroed", "garbage", "short", "negative", "details", "few-details", "v1"])
def test_a_damaged_cache_file_is_ignored(tmp_path, damage_cache):
    clone_steps(tmp_path, [1, 2, 3])
    ckpt.CheckpointManager(tmp_path)._delete_steps([])  # a writer leaves the cache
    cache = tmp_path / ".ckpt-listing"
    cache.write_bytes(damage_cache(cache.read_bytes()))
    mgr = ckpt.CheckpointManager(tmp_path)
    assert mgr.all_steps() == [1, 2, 3] and mgr.latest_step() == 3
    assert [i.metrics["loss"] for i in mgr.infos()] == [1 / 2, 1 / 3, 1 / 4]


def test_the_cache_vouches_for_steps_with_their_records(tmp_path):
    """The binary columns come back as written: a fresh reader's listing stats the
    manifests and reads none of them, until one is rewritten in place."""
    clone_steps(tmp_path, [1, 5, 12])
    time.sleep(0.1)  # older than a timestamp tick: see the next test
    ckpt.CheckpointManager(tmp_path)._delete_steps([])
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr._step_dirs()
    assert mgr._listing.vouched([1, 5, 12]) == {1, 5, 12}
    manifest = tmp_path / "step_5" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes())  # same bytes, same inode, new ctime
    assert mgr._listing.vouched([1, 5, 12]) == {1, 12}
    assert [i.metrics["loss"] for i in mgr.infos()] == [1 / 2, 1 / 6, 1 / 13]


def test_a_manifest_younger_than_a_timestamp_tick_is_not_recorded(tmp_path):
    """Changed in place within the tick of its last change, a manifest would keep its
    signature: the cache records only manifests older than a tick when stat'ed."""
    from ckpt.storage import listing

    clone_steps(tmp_path, [3])
    path = tmp_path / "step_3" / "manifest.json"
    signature = listing.file_signature(str(path))
    info = StepInfo(step=3, time=1.0, path=str(path.parent))
    cache = listing.Listing(str(tmp_path))
    changed = signature[3]
    cache.remember(3, signature, info, changed + 10_000_000)  # 10 ms after its change
    assert 3 not in cache._read_here
    cache.remember(3, signature, info, changed + 1_000_000_000)
    assert cache._read_here[3] == (signature, info)
    whole_second = (*signature[:3], changed - changed % 1_000_000_000)  # a 1-2 s tick
    cache._read_here.clear()
    cache.remember(3, whole_second, info, whole_second[3] + 1_000_000_000)
    assert 3 not in cache._read_here


def test_records_after_a_forgotten_one_keep_their_own_details(tmp_path):
    """A writer drops a deleted step's record before it reads other records."""
    clone_steps(tmp_path, [1, 2, 3, 4])
    ckpt.CheckpointManager(tmp_path)._delete_steps([])
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(2))
    mgr.delete(2)
    assert [(i.step, i.metrics["loss"]) for i in mgr.infos()] == [
        (1, 1 / 2), (3, 1 / 4), (4, 1 / 5)]
    assert [(i.step, i.metrics["loss"]) for i in ckpt.CheckpointManager(tmp_path).infos()] == [
        (1, 1 / 2), (3, 1 / 4), (4, 1 / 5)]


def test_the_leftover_scan_is_skipped_only_while_the_directory_is_as_left(tmp_path, monkeypatch):
    """A writer records the directory clean (.ckpt-clean); a later one skips its scan
    for leftovers while the directory's inode, mtime, ctime and link count match, and
    scans when a dead writer changed it, after an error it went on from, and every
    FULL_SCAN_EVERY writes whatever the mark says."""
    from ckpt import fsutil

    scans = []
    real_scan = fsutil._leftover_names
    monkeypatch.setattr(fsutil, "_leftover_names", lambda d: scans.append(d) or real_scan(d))
    state = {"w": np.ones(4, np.float32)}
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(2))
    mgr.save(1, state)  # no mark yet: scans, then leaves one
    assert (tmp_path / fsutil.CLEAN_NAME).exists() and len(scans) == 1
    for step in (2, 3, 4):
        mgr.save(step, state)
    assert len(scans) == 1, "a clean directory was scanned again"

    # a writer that died mid-save: its temporary directory changes the directory
    (tmp_path / ".tmp-step_5-host-1-dead").mkdir()
    mgr.save(5, state)
    assert len(scans) == 2 and not (tmp_path / ".tmp-step_5-host-1-dead").exists()

    # a leftover the mark does not show (as a clock too coarse to see a change
    # would leave it: the mark rewritten after it) goes with the periodic full scan
    (tmp_path / ".tmp-x").write_bytes(b"left")
    fsutil._write_clean_mark(str(tmp_path), 0)
    step = 6
    while (tmp_path / ".tmp-x").exists():
        mgr.save(step, state)
        step += 1
        assert step <= 6 + fsutil.FULL_SCAN_EVERY + 1, "the periodic scan never came"
    assert len(scans) == 3

    # pruning failed and the save went on: a .trash- directory may be left
    monkeypatch.setattr(mgr.store, "remove_steps", lambda paths: (_ for _ in ()).throw(
        PermissionError("denied")))
    with pytest.warns(UserWarning, match="could not delete steps"):
        mgr.save(step, state)
    monkeypatch.undo()
    monkeypatch.setattr(fsutil, "_leftover_names", lambda d: scans.append(d) or real_scan(d))
    mgr.save(step + 1, state)
    assert len(scans) == 4, "the writer after a swallowed error did not scan"


def test_a_few_steps_of_many_are_vouched_for_as_all_of_them_are(tmp_path):
    """Asked about a few steps of many (a writer's kept steps), the cache looks them
    up by bisection; the answer is what the full loop over every record gives."""
    clone_steps(tmp_path, list(range(0, 200, 2)))
    time.sleep(0.1)
    ckpt.CheckpointManager(tmp_path)._delete_steps([])
    manifest = tmp_path / "step_100" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes())  # changed after the cache was written
    mgr = ckpt.CheckpointManager(tmp_path)
    every = mgr._step_dirs()
    assert mgr._listing.vouched(every) == set(every) - {100}
    assert mgr._listing.vouched([0, 98, 100, 101, 198]) == {0, 98, 198}
    assert mgr._listing.vouched([100]) == set()
    assert mgr._listing.info_of(198).metrics == {"loss": 1 / 199}  # its own details
    assert mgr._listing.info_of(0).metrics == {"loss": 1.0}


def test_after_pruning_a_writer_lists_what_it_left_without_listing_again(tmp_path, monkeypatch):
    """The directory is listed once in a save that prunes: what is left after the
    writer's own deletions is what it listed less what it deleted, and the cache it
    writes holds those steps."""
    from ckpt import fsutil

    clone_steps(tmp_path, list(range(1, 41)))
    time.sleep(0.1)
    ckpt.CheckpointManager(tmp_path)._delete_steps([])
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(3))
    listed = []
    step_names = fsutil.step_names
    monkeypatch.setattr(fsutil, "step_names", lambda d: listed.append(d) or step_names(d))
    mgr.save(41, {"w": np.arange(4.0)})
    assert len(listed) == 1
    assert mgr.all_steps() == [39, 40, 41]  # outside the write: listed again
    assert len(listed) == 2
    fresh = ckpt.CheckpointManager(tmp_path)
    assert fresh.all_steps() == [39, 40, 41]
    # 41 is younger than a timestamp tick: read from its manifest, not recorded
    assert fresh._listing.vouched([39, 40, 41]) == {39, 40}
    fresh._delete_steps([39])
    assert len(listed) == 4  # the deletion's own listing, none after it
    assert ckpt.CheckpointManager(tmp_path).all_steps() == [40, 41]


def test_a_writer_drops_the_records_of_the_steps_it_pruned_with_them(tmp_path, monkeypatch):
    """Pruning most steps drops their records right away (not in the cache rewrite
    that ends the save); the records kept still vouch, with their own details, and
    the cache written afterwards holds exactly the steps that are left."""
    clone_steps(tmp_path, list(range(1, 41)))
    time.sleep(0.1)
    ckpt.CheckpointManager(tmp_path)._delete_steps([])
    (tmp_path / "step_99999999999999999999").mkdir()  # no int64: never recorded
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(3))
    listing = mgr._listing
    seen = {}
    removed = listing.removed

    def removed_then_look(steps):
        removed(steps)
        seen.update(count=listing._count, forgotten=set(listing._forgotten),
                    vouched=listing.vouched([39, 40]),
                    loss={step: listing.info_of(step).metrics["loss"] for step in (39, 40)})

    monkeypatch.setattr(listing, "removed", removed_then_look)
    mgr.save(41, {"w": np.arange(4.0)})
    assert seen["count"] == 2 and seen["forgotten"] == set()  # 38 records dropped
    assert seen["vouched"] == {39, 40}
    assert seen["loss"] == {39: 1 / 40, 40: 1 / 41}
    assert (tmp_path / "step_99999999999999999999").is_dir()
    fresh = ckpt.CheckpointManager(tmp_path)
    assert [i.step for i in fresh.infos()] == [39, 40, 41]
    assert fresh._listing._count == 2  # 41 is too young to be recorded
    assert fresh._listing.vouched([39, 40, 41]) == {39, 40}


def test_after_deleting_a_few_of_many_steps_the_cache_vouches_for_the_rest(tmp_path):
    """Deleting 2 of 40 steps (the other records kept as they are, the 2 forgotten):
    the cache written afterwards vouches for the 38 left."""
    clone_steps(tmp_path, list(range(1, 41)))
    time.sleep(0.1)
    ckpt.CheckpointManager(tmp_path)._delete_steps([])
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr._delete_steps([1, 2])
    fresh = ckpt.CheckpointManager(tmp_path)
    assert fresh.all_steps() == list(range(3, 41))
    assert fresh._listing.vouched(range(3, 41)) == set(range(3, 41))


def test_a_rewrite_carries_vouched_records_over_unparsed_and_merges_new_ones(
        tmp_path, monkeypatch):
    """A writer that must rewrite the cache (it deleted a step) copies the records
    the file vouched for as they are, without parsing their details, and merges the
    steps it read from their manifests in step order: a fresh reader then vouches
    for every step, each with its own time and metric."""
    from ckpt.storage import listing

    clone_steps(tmp_path, list(range(2, 41, 2)))
    time.sleep(0.1)
    ckpt.CheckpointManager(tmp_path)._delete_steps([])  # records 2, 4, ..., 40
    clone_steps(tmp_path, [3, 15, 41])  # not in the cache: read from their manifests
    time.sleep(0.1)
    parsed = []
    detail = listing.Listing._detail
    monkeypatch.setattr(listing.Listing, "_detail",
                        lambda self, step: parsed.append(step) or detail(self, step))
    ckpt.CheckpointManager(tmp_path)._delete_steps([2])
    assert parsed == []
    monkeypatch.undo()
    fresh = ckpt.CheckpointManager(tmp_path)
    expected = [*range(4, 41, 2), 3, 15, 41]
    assert [(i.step, i.metrics["loss"], i.time) for i in fresh.infos()] == [
        (step, 1.0 / (step + 1), 1.7e9 + step) for step in sorted(expected)]
    assert fresh._listing.vouched(expected) == set(expected)


def test_a_keep_all_save_lists_once_stats_nothing_and_still_refreshes_the_cache(
        tmp_path, monkeypatch):
    """Under KeepAll (the default) a save has nothing to prune: it neither stats the
    old steps' manifests nor parses any record, and lists the directory once, to
    see how many steps the cache lacks; more than _MAX_UNCACHED of them and the
    cache is written again, so that readers stat instead of reading manifests."""
    from ckpt import fsutil
    from ckpt.storage import listing

    clone_steps(tmp_path, list(range(1, 11)))
    time.sleep(0.1)
    ckpt.CheckpointManager(tmp_path)._delete_steps([])  # records 1..10
    state = {"w": np.arange(4.0)}
    listed, stats = [], []
    step_names, vouched = fsutil.step_names, listing.Listing.vouched
    monkeypatch.setattr(fsutil, "step_names", lambda d: listed.append(d) or step_names(d))
    monkeypatch.setattr(listing.Listing, "vouched",
                        lambda self, steps: stats.append(1) or vouched(self, steps))
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(11, state)
    assert len(listed) == 1 and stats == []
    header = (tmp_path / listing.LISTING_NAME).read_bytes().split(b"\n")[0]

    clone_steps(tmp_path, list(range(100, 100 + listing._MAX_UNCACHED)))
    time.sleep(0.1)
    mgr.save(12, state)  # 64 + 11, 12 uncached: 66 (11 was too young to record)
    assert (tmp_path / listing.LISTING_NAME).read_bytes().split(b"\n")[0] != header
    monkeypatch.undo()
    fresh = ckpt.CheckpointManager(tmp_path)
    old = [*range(1, 12), *range(100, 100 + listing._MAX_UNCACHED)]
    assert fresh.all_steps() == sorted([*old, 12])
    assert fresh._listing.vouched(old) == set(old)
