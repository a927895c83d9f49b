"""CheckpointManager: save/restore, schedule, delete, restore-into, keys, corruption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import ckpt
from ckpt.h5format import PACK_THRESHOLD
from tests.conftest import ROOT, assert_tree_equal
from tests.step_files import edit_index, leaf_entry, read_index
from tests.test_tree import trees


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_tree_round_trips_through_manager(tmp_path_factory, tree):
    mgr = ckpt.CheckpointManager(tmp_path_factory.mktemp("m"))
    mgr.save(3, tree)
    assert_tree_equal(tree, mgr.restore(3))
    assert_tree_equal(tree, mgr.restore())


def test_listing_and_schedule(tmp_path, small_state):
    mgr = ckpt.CheckpointManager(tmp_path, save_every=10)
    saved = [s for s in range(35) if mgr.save(s, small_state)]
    assert saved == [0, 10, 20, 30] == mgr.all_steps()
    assert mgr.latest_step() == 30
    assert mgr.save(31, small_state, force=True)
    assert mgr.should_save(40) and not mgr.should_save(41)
    # .ckpt-listing: the listing cache writers leave (issue 15)
    assert sorted(os.listdir(tmp_path)) == [".ckpt-clean", ".ckpt-listing", ".ckpt.lock", "step_0",
                                            "step_10", "step_20", "step_30", "step_31"]
    assert sorted(os.listdir(tmp_path / "step_10")) == ["manifest.json", "state.h5"]


def test_save_every_seconds_uses_time_on_disk(tmp_path, small_state):
    mgr = ckpt.CheckpointManager(tmp_path, save_every_seconds=3600)
    assert mgr.save(1, small_state)
    assert not mgr.save(2, small_state)
    # a restart does not reset the window: the last save time comes from the manifest
    assert not ckpt.CheckpointManager(tmp_path, save_every_seconds=3600).should_save(3)


def test_step_exists(tmp_path, small_state):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(5, small_state)
    with pytest.raises(ckpt.StepExistsError) as info:
        mgr.save(5, small_state)
    assert info.value.step == 5 and "step_5" in str(info.value)
    assert isinstance(info.value, FileExistsError)


def test_delete_and_best_step(tmp_path, small_state):
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepBest("acc", mode="max", n=2))
    for step, acc in enumerate([0.5, 0.9, 0.7, 0.6]):
        mgr.save(step, small_state, metrics={"acc": np.float32(acc)})
    assert mgr.all_steps() == [1, 2, 3]  # best two plus the newest
    assert mgr.best_step() == 1
    assert mgr.best_step("acc", mode="min") == 3
    mgr.delete(1)
    assert mgr.all_steps() == [2, 3]
    with pytest.raises(ckpt.CheckpointNotFoundError, match="step 1"):
        mgr.delete(1)
    assert mgr.info(2).metrics == {"acc": pytest.approx(0.7)}


def test_metrics_and_metadata_are_checked_before_writing(tmp_path, small_state):
    mgr = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(ckpt.UnsupportedTypeError, match="metadata"):
        mgr.save(1, small_state, metadata={"f": object()})
    with pytest.raises(ckpt.UnsupportedTypeError, match="metrics/loss"):
        mgr.save(1, small_state, metrics={"loss": [1, 2]})
    with pytest.raises(ckpt.UnsupportedTypeError, match="bad"):
        mgr.save(1, {"bad": object()})
    assert os.listdir(tmp_path) == [".ckpt.lock"] or mgr.all_steps() == []
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


class Box:
    """A stateful object in the PyTorch convention."""

    def __init__(self, size=4):
        self.values = np.zeros(size)
        self.count = 0
        self.loaded = None

    def state_dict(self):
        return {"values": self.values, "count": self.count}

    def load_state_dict(self, state):
        self.loaded = state
        self.count = state["count"]


def test_restore_into_fills_arrays_in_place_and_loads_stateful(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    box = Box()
    box.values[:] = 7
    box.count = 3
    state = {"w": np.arange(6.0).reshape(2, 3), "box": box, "step": 11}
    mgr.save(1, state)
    fresh_w = np.zeros((2, 3))
    fresh_box = Box()
    restored = mgr.restore(into={"w": fresh_w, "box": fresh_box, "step": 0})
    assert restored["w"] is fresh_w and fresh_w[1, 2] == 5.0
    assert restored["box"] is fresh_box and fresh_box.count == 3
    assert (fresh_box.values == 7).all()  # filled in place through its state dict
    assert restored["step"] == 11


def test_strict_mismatch_lists_every_difference_and_touches_nothing(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, {"a": np.zeros(3), "b": np.zeros(2, np.float32), "c": 1, "d": [1, 2],
                 "f": np.zeros(3, np.float64)})
    template = {"a": np.ones(4), "b": np.ones(2, np.float64), "e": 5, "d": [1, 2],
                "f": np.ones((2, 2), np.int32)}
    with pytest.raises(ckpt.StateMismatchError) as info:
        mgr.restore(1, into=template)
    error = info.value
    kinds = {(m.key, m.kind) for m in error.mismatches}
    assert kinds == {("a", "shape"), ("b", "dtype"), ("e", "missing"), ("c", "unexpected"),
                     ("f", "shape"), ("f", "dtype")}  # shape AND dtype: both reported
    assert "f: shape (expected (2, 2), found (3,))" in str(error)
    assert "f: dtype (expected int32, found float64)" in str(error)
    message = str(error)
    assert "(4,)" in message and "(3,)" in message and "float64" in message
    assert "step_1" in message and isinstance(error, ValueError)
    assert (template["a"] == 1).all() and (template["b"] == 1).all()


def test_non_strict_restores_what_matches_and_reports_the_rest(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, {"a": np.arange(3.0), "b": np.zeros(2), "extra": 1})
    template = {"a": np.zeros(3), "b": np.ones(5)}
    with pytest.warns(UserWarning, match="b: shape"):
        out = mgr.restore(into=template, strict=False)
    assert out["a"] is template["a"] and (template["a"] == [0, 1, 2]).all()
    assert (template["b"] == 1).all()


def test_keys_restores_subtrees_only(tmp_path, small_state):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, small_state)
    assert_tree_equal(mgr.restore(keys="model"), {"model": small_state["model"]})
    only = mgr.restore(keys=[("opt", "state", 0)])
    assert list(only) == ["opt"] and list(only["opt"]) == ["state"]
    template = {"model": {"w": np.zeros((300, 100), np.float32), "b": np.zeros(100, np.float32)},
                "opt": None, "step": 0}
    out = mgr.restore(into=template, keys="model")
    assert out["step"] == 0 and out["opt"] is None
    assert (template["model"]["w"] == small_state["model"]["w"]).all()
    with pytest.raises(ckpt.StateMismatchError, match="nope"):
        mgr.restore(keys="nope")


def test_keys_reads_only_the_named_subtree_from_disk(tmp_path):
    """Damage outside the selected subtree does not matter: it is never read."""
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, {"keep": np.ones(4), "other": np.zeros(100_000)})
    flip_byte_in_leaf(tmp_path / "step_1", "other")
    assert mgr.restore(1, keys="keep")["keep"].sum() == 4
    with pytest.raises(ckpt.CorruptCheckpointError):
        mgr.restore(1)


# ------------------------------------------------------------ corruption


def flip_byte_in_leaf(step_dir, name):
    entry = leaf_entry(step_dir, [name])
    assert entry["nbytes"] >= PACK_THRESHOLD, "test needs a dataset leaf"
    with open(step_dir / "state.h5", "r+b") as handle:
        handle.seek(entry["offset"] + entry["nbytes"] // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x10]))


def three_steps(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    for step in (1, 2, 3):
        mgr.save(step, {"weights": np.full(50_000, step, np.float32), "small": step})
    return mgr


def restore_latest_warning(mgr):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = mgr.restore()
    return state, [str(w.message) for w in caught]


def test_flipped_byte_in_array_data(tmp_path):
    mgr = three_steps(tmp_path)
    flip_byte_in_leaf(tmp_path / "step_3", "weights")
    state, messages = restore_latest_warning(mgr)
    assert state["small"] == 2
    assert len(messages) == 1 and "step 3" in messages[0] and "weights" in messages[0]
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        mgr.restore(3)
    assert info.value.key == "weights" and info.value.step == 3
    assert "state.h5" in str(info.value) and "checksum" in str(info.value)
    assert mgr.restore(3, verify=False)["small"] == 3  # verify=False skips the check


def test_flipped_byte_in_packed_small_leaves(tmp_path):
    mgr = three_steps(tmp_path)
    pack = read_index(tmp_path / "step_3")["packs"][0]
    with open(tmp_path / "step_3" / "state.h5", "r+b") as handle:
        handle.seek(pack["offset"])
        handle.write(b"\xff")
    with pytest.raises(ckpt.CorruptCheckpointError, match="small"):
        mgr.restore(3)
    assert restore_latest_warning(mgr)[0]["small"] == 2


def test_truncated_data_file(tmp_path):
    mgr = three_steps(tmp_path)
    path = tmp_path / "step_3" / "state.h5"
    os.truncate(path, os.path.getsize(path) // 2)
    state, messages = restore_latest_warning(mgr)
    assert state["small"] == 2 and "truncated" in messages[0]
    with pytest.raises(ckpt.CorruptCheckpointError, match="truncated"):
        mgr.restore(3)


def test_missing_data_file(tmp_path):
    mgr = three_steps(tmp_path)
    os.unlink(tmp_path / "step_3" / "state.h5")
    with pytest.raises(ckpt.CorruptCheckpointError, match="missing"):
        mgr.restore(3)
    assert restore_latest_warning(mgr)[0]["small"] == 2


@pytest.mark.parametrize("damage", ["missing", "garbage", "wrong_step", "truncated_json",
                                    "bad_offset"])
def test_missing_or_damaged_manifest(tmp_path, damage):
    mgr = three_steps(tmp_path)
    path = tmp_path / "step_3" / "manifest.json"
    text = path.read_text()
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01 not json")
    elif damage == "wrong_step":
        path.write_text(text.replace('"step":3', '"step":2'))
    elif damage == "truncated_json":
        path.write_text(text[: len(text) // 2])
    else:  # consistently: the manifest vouches for the edited index
        edit_index(tmp_path / "step_3", lambda index: index["leaves"][0].update(offset=10**12))
    if damage != "bad_offset":
        assert mgr.all_steps() == [1, 2]  # without a valid manifest it is no checkpoint
    state, messages = restore_latest_warning(mgr)
    assert state["small"] == 2
    assert len(messages) == 1 and "step 3" in messages[0] and "manifest" in messages[0] \
        or "outside the file" in messages[0]
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        mgr.restore(3)
    assert info.value.step == 3 and "step_3" in str(info.value)
    # a damaged step blocks its number until deleted, and delete works on it
    with pytest.raises(ckpt.StepExistsError):
        mgr.save(3, {"x": 1})
    mgr.delete(3)
    mgr.save(3, {"x": 1})


def test_no_checkpoint_verifies(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, {"w": np.ones(50_000)})
    flip_byte_in_leaf(tmp_path / "step_1", "w")
    with pytest.warns(UserWarning), pytest.raises(ckpt.CorruptCheckpointError,
                                                  match="no checkpoint verifies"):
        mgr.restore()


def test_empty_directory(tmp_path):
    with pytest.raises(ckpt.CheckpointNotFoundError, match="no checkpoints"):
        ckpt.CheckpointManager(tmp_path).restore()
    with pytest.raises(ckpt.CheckpointNotFoundError, match="step 4"):
        ckpt.CheckpointManager(tmp_path).restore(4)


def test_leftovers_of_a_crashed_writer_are_removed_by_the_next_writer(tmp_path, small_state):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, small_state)
    (tmp_path / ".tmp-step_2-host-1-abc").mkdir()
    (tmp_path / ".tmp-step_2-host-1-abc" / "state.h5").write_bytes(b"partial")
    (tmp_path / ".trash-step_0-host-1-abc").mkdir()
    assert mgr.all_steps() == [1]
    mgr.save(2, small_state)
    assert sorted(os.listdir(tmp_path)) == [".ckpt-clean", ".ckpt-listing", ".ckpt.lock", "step_1",
                                            "step_2"]


# ------------------------------------------------- metrics (issue 11: 6, 10)


def test_int_metric_beyond_float_range_is_refused_naming_it(tmp_path, small_state):
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepBest("loss"))
    for value in (10**400, -10**400):
        with pytest.raises(ckpt.UnsupportedTypeError) as info:
            mgr.save(1, small_state, metrics={"loss": value})
        assert info.value.key == "metrics/loss"
        assert "metrics/loss" in str(info.value) and "fit in a float" in str(info.value)
    assert not tmp_path.exists() or mgr.all_steps() == []
    assert mgr.save(1, small_state, metrics={"loss": 10**300})  # big but rankable: fine


def test_huge_int_metric_in_an_existing_manifest_is_not_ranked_and_breaks_nothing(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(1) | ckpt.KeepBest("loss"))
    mgr.save(1, {"x": 1}, metrics={"loss": 7})
    path = tmp_path / "step_1" / "manifest.json"
    path.write_text(path.read_text().replace('"loss":7', '"loss":' + "9" * 400))
    # written by hand or an older version: later saves (and a restart) must still work
    restarted = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(1) | ckpt.KeepBest("loss"))
    assert restarted.best_step() is None  # not rankable, so never the best
    restarted.save(2, {"x": 2}, metrics={"loss": 0.5})
    restarted.save(3, {"x": 3}, metrics={"loss": 0.9})
    assert restarted.all_steps() == [2, 3] and restarted.best_step() == 2


def strict_json(text):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_metrics_are_stored_as_valid_json_and_never_ranked(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepBest("loss", n=2) | ckpt.KeepLast(1))
    values = {1: float("nan"), 2: 0.4, 3: np.float32("-inf"), 4: float("inf"), 5: 0.9}
    for step, loss in values.items():
        mgr.save(step, {"x": step}, metrics={"loss": loss, "acc": 0.5})
    record = strict_json((tmp_path / "step_5" / "manifest.json").read_text())
    assert record["metrics"] == {"loss": 0.9, "acc": 0.5}
    # a NaN or infinite loss is never among the best: steps 2 and 5 are the two best
    assert mgr.all_steps() == [2, 5] and mgr.best_step() == 2
    mgr.save(6, {"x": 6}, metrics={"loss": float("nan")})
    mgr.save(7, {"x": 7}, metrics={"loss": float("-inf"), "worst": float("inf")})
    stored = strict_json((tmp_path / "step_7" / "manifest.json").read_text())["metrics"]
    assert stored == {"loss": "-Infinity", "worst": "Infinity"}
    assert float(stored["loss"]) == -np.inf  # float() turns the strings back into numbers
    assert mgr.info(7).metrics["loss"] == "-Infinity" and mgr.best_step() == 2


def test_a_kept_nan_metric_is_stored_as_the_json_string_nan(tmp_path):
    """The test above prunes its NaN steps before reading a manifest; here one is kept."""
    mgr = ckpt.CheckpointManager(tmp_path, keep=ckpt.KeepLast(3))
    mgr.save(1, {"x": 1}, metrics={"loss": float("nan"), "val_loss": np.float32("nan"),
                                   "acc": 0.5})
    assert mgr.all_steps() == [1]
    record = strict_json((tmp_path / "step_1" / "manifest.json").read_text())
    assert record["metrics"] == {"loss": "NaN", "val_loss": "NaN", "acc": 0.5}
    assert np.isnan(float(record["metrics"]["val_loss"]))


@pytest.mark.parametrize("metadata, where", [({"loss": float("nan")}, "metadata/loss"),
                                             ({"runs": [1.0, float("inf")]}, "metadata/runs/1"),
                                             ({"a": {"b": -np.inf}}, "metadata/a/b")])
def test_non_finite_metadata_is_refused_naming_the_key_and_nothing_is_written(
        tmp_path, metadata, where):
    """Issue 11, item 10: metadata NaN/Infinity used to be written as non-JSON tokens."""
    mgr = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(ckpt.UnsupportedTypeError, match=f"{where}: .*no NaN or infinity"):
        mgr.save(1, {"x": 1}, metadata=metadata, force=True)
    assert mgr.all_steps() == [] and not list(tmp_path.glob("step_*"))
    with pytest.raises(ckpt.UnsupportedTypeError, match=where):
        ckpt.save(tmp_path / "one.ckpt", {"x": 1}, metadata=metadata)
    assert not (tmp_path / "one.ckpt").exists()
    mgr.save(2, {"x": 1}, metadata={"loss": "NaN", "ok": 1.5}, force=True)  # as strings: fine
    assert strict_json((tmp_path / "step_2" / "manifest.json").read_text())["metadata"] == {
        "loss": "NaN", "ok": 1.5}


@pytest.mark.parametrize("value, shown", [(np.ones(3), "shape (3,)"),
                                          (np.ones((1, 1)), "shape (1, 1)"),
                                          ([0.1, 0.2], "number, str, bool or None"),
                                          ({"a": 1}, "number, str, bool or None")])
def test_non_scalar_metric_is_refused_naming_it(tmp_path, value, shown):
    mgr = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(ckpt.UnsupportedTypeError) as info:
        mgr.save(1, {"x": 1}, metrics={"val_acc": value})
    assert info.value.key == "metrics/val_acc" and shown in str(info.value)
    assert not tmp_path.exists() or mgr.all_steps() == []


# --------------------------------------------- arguments (issue 11: 10)


@pytest.mark.parametrize("kwargs, message", [
    ({"save_every": True}, "save_every must be an int >= 1 (a number of steps), got True"),
    ({"save_every": 2.5}, "save_every must be an int >= 1 (a number of steps), got 2.5"),
    ({"save_every": 0}, "save_every must be an int >= 1 (a number of steps), got 0"),
    ({"save_every_seconds": -1}, "save_every_seconds must be a finite number of seconds > 0, "
                                 "got -1"),
    ({"save_every_seconds": float("nan")}, "finite number of seconds > 0, got nan"),
    ({"save_every_seconds": float("inf")}, "finite number of seconds > 0, got inf"),
    ({"save_every_seconds": True}, "finite number of seconds > 0, got True"),
    ({"save_every_seconds": "60"}, "finite number of seconds > 0, got '60'"),
])
def test_bad_schedules_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as info:
        ckpt.CheckpointManager(tmp_path, **kwargs)
    assert str(info.value).endswith(message)
    assert str(info.value).startswith(next(iter(kwargs)) + " must be ")


def test_numpy_steps_are_accepted_and_str_steps_refused_everywhere(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, save_every=np.int32(5))
    assert mgr.save(np.int64(5), {"x": 1}) and not mgr.save(np.uint8(6), {"x": 1})
    assert mgr.all_steps() == [5] and type(mgr.all_steps()[0]) is int
    assert json.loads((tmp_path / "step_5" / "manifest.json").read_text())["step"] == 5
    assert mgr.restore(np.int64(5)) == {"x": 1}
    for call in (lambda: mgr.restore("5"), lambda: mgr.save("6", {"x": 1}),
                 lambda: mgr.delete("5"), lambda: mgr.should_save("5"),
                 lambda: mgr.save(5.0, {"x": 1}), lambda: mgr.save(True, {"x": 1})):
        with pytest.raises(TypeError, match=r"a step must be an int \(numpy integers too\), "
                                            r"got .* \((str|float|bool)\)"):
            call()
    with pytest.raises(ValueError, match="a step must be >= 0, got -1"):
        mgr.restore(-1)
    mgr.delete(np.int64(5))
    assert mgr.all_steps() == []


# ----------------------------------- a reader creates nothing (issue 11)


def test_a_reader_of_a_missing_directory_creates_nothing_and_says_so(tmp_path):
    directory = tmp_path / "typo" / "path"
    mgr = ckpt.CheckpointManager(directory)
    assert not (tmp_path / "typo").exists()
    # listing a missing directory is listing no checkpoints (an evaluator may start first)
    assert mgr.latest_step() is None and mgr.all_steps() == [] and mgr.best_step("loss") is None
    assert mgr.wait_for_new_step(timeout=0.05, poll_interval=0.01) is None
    with pytest.raises(ckpt.CheckpointNotFoundError) as info:
        mgr.restore()
    assert str(info.value) == f"checkpoint not found: {directory} (no such directory)"
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"step 3 not found: .*typo/path/"
                                                           r"step_3"):
        mgr.restore(3)
    with pytest.raises(ckpt.CheckpointNotFoundError, match="step_3"):
        mgr.delete(3)
    with pytest.raises(ckpt.CheckpointNotFoundError, match="step_3"):
        mgr.set_aside(3)
    assert not (tmp_path / "typo").exists()
    assert mgr.save(3, {"x": 1}) and mgr.latest_step() == 3  # the first save creates it
    (tmp_path / "file").write_text("")
    with pytest.raises(ckpt.CheckpointError, match="file is not a directory"):
        ckpt.CheckpointManager(tmp_path / "file")


def test_wait_for_new_step_on_a_missing_directory_waits_for_the_trainer(tmp_path):
    directory = tmp_path / "run"
    evaluator = ckpt.CheckpointManager(directory)
    trainer = threading.Timer(0.3, lambda: ckpt.CheckpointManager(directory).save(1, {"x": 1}))
    trainer.start()
    try:
        assert evaluator.wait_for_new_step(timeout=30, poll_interval=0.02) == 1
    finally:
        trainer.join()


# ---------------------------------------------- clock skew (issue 11: 8)


def stamp(step_dir, saved_at):
    path = step_dir / "manifest.json"
    record = json.loads(path.read_text())
    record["time"] = saved_at
    path.write_text(json.dumps(record))


def test_a_step_stamped_in_the_future_does_not_stop_save_every_seconds(tmp_path):
    ckpt.CheckpointManager(tmp_path).save(1, {"x": 1})
    stamp(tmp_path / "step_1", time.time() + 10**6)  # another node's clock, 11 days ahead
    mgr = ckpt.CheckpointManager(tmp_path, save_every_seconds=0.3)
    assert not mgr.should_save(2)  # the future step counts as saved just now...
    time.sleep(0.35)
    assert mgr.save(2, {"x": 2})  # ...not as saved 11 days from now
    assert not mgr.should_save(3)
    time.sleep(0.35)
    assert mgr.should_save(3)  # and within a process the schedule runs on time.monotonic


def test_a_step_stamped_in_the_future_does_not_stop_keep_every_seconds(tmp_path):
    keep = ckpt.KeepEvery(seconds=3600) | ckpt.KeepLast(1)
    mgr = ckpt.CheckpointManager(tmp_path, keep=keep)
    mgr.save(1, {"x": 1})
    stamp(tmp_path / "step_1", time.time() + 10**6)
    for step in (2, 3, 4):
        mgr.save(step, {"x": step})
    # step 2, the first after the clock went back, starts a new window and is kept
    assert mgr.all_steps() == [1, 2, 4]


# ---------------------------------------------- permissions (issue 11: 10)


PERMISSIONS = r"""
import os, sys, ckpt
base = sys.argv[1]
def report(call):
    try:
        call()
    except Exception as error:
        print(type(error).__name__, isinstance(error, PermissionError), str(error), sep="|")
    else:
        print("no error")
unreadable = os.path.join(base, "unreadable")
report(lambda: ckpt.CheckpointManager(unreadable))
readonly = os.path.join(base, "readonly")
mgr = ckpt.CheckpointManager(readonly)
report(lambda: mgr.delete(1))
report(lambda: mgr.save(2, {"x": 2}))
fresh = os.path.join(base, "fresh")
report(lambda: ckpt.CheckpointManager(fresh).save(1, {"x": 1}))
print(mgr.restore(1))
"""


def without_root_powers() -> list[str]:
    """A command prefix under which permission bits apply (root keeps its uid, loses
    CAP_DAC_OVERRIDE): the files stay readable for the test, which runs as root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root's permission override")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def test_permission_errors_name_the_path_that_refused(tmp_path):
    (tmp_path / "unreadable").mkdir()
    ckpt.CheckpointManager(tmp_path / "readonly").save(1, {"x": 1})
    (tmp_path / "fresh").mkdir()
    (tmp_path / "unreadable").chmod(0o000)
    (tmp_path / "readonly").chmod(0o500)
    (tmp_path / "fresh").chmod(0o500)
    try:
        result = subprocess.run([*without_root_powers(), sys.executable, "-c", PERMISSIONS,
                                 str(tmp_path)], capture_output=True, text=True, timeout=60,
                                cwd=ROOT)
    finally:
        for name in ("unreadable", "readonly", "fresh"):
            (tmp_path / name).chmod(0o700)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("CheckpointPermissionError|True|cannot list the checkpoint directory: "
                        f"{tmp_path}/unreadable: permission denied")
    assert lines[1] == ("CheckpointPermissionError|True|cannot delete step 1: "
                        f"{tmp_path}/readonly/step_1: permission denied")
    # the existing lock file opens; creating the step's temporary directory fails
    assert lines[2].startswith("SaveError|False|[Errno 13] could not save step 2: ")
    assert f"{tmp_path}/readonly/.tmp-step_2-" in lines[2]
    # a fresh read-only directory: taking the writer lock is what fails, and it is named
    assert lines[3] == ("SaveError|False|[Errno 13] could not save step 1: Permission denied: "
                        f"'{tmp_path}/fresh/.ckpt.lock'")
    assert lines[4] == "{'x': 1}"  # the read-only directory still restores
