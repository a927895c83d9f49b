"""Incremental saves (issue 15, item 3): unchanged large leaves are hard-linked.

Real files, real h5py: what is linked (inode identity), what is written, and that
every reader (restore, verify, export, diff, show, plain h5py) and every deletion
behaves as for full saves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import ckpt
from ckpt import cli, h5format, incremental, inspection
from ckpt.export import export_step
from tests.conftest import ROOT

FROZEN = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)  # 2 MiB


def state(step: int) -> dict:
    """A fine-tuning state: a frozen matrix, a trained vector, small leaves."""
    return {"model": {"frozen": FROZEN, "head/w": np.full(200_000, step, np.float32)},
            "step": step, "tag": f"s{step}", "bias": np.full(8, step, np.int64)}


def save_steps(directory, steps, **options) -> ckpt.CheckpointManager:
    mgr = ckpt.CheckpointManager(directory, incremental=True, **options)
    for step in steps:
        mgr.save(step, state(step))
    mgr.wait_until_finished()
    return mgr


def same_tree(a, b) -> None:
    """Bit-identical trees: same types, dtypes, shapes and bytes."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            same_tree(a[key], b[key])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    else:
        assert a == b


def index_of(step_dir) -> dict:
    return h5format.read_header_index(os.path.join(step_dir, "state.h5"))


def entry(step_dir, key: str) -> dict:
    return next(e for e in index_of(step_dir)["leaves"] if "/".join(map(str, e["path"])) == key)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_unchanged_leaves_are_linked_changed_ones_written(tmp_path, async_save):
    mgr = save_steps(tmp_path, [1, 2, 3], async_save=async_save)
    original = os.stat(tmp_path / "step_1" / "state.h5")
    for step in (2, 3):
        linked = os.stat(tmp_path / f"step_{step}" / "data.step1.h5")
        assert linked.st_ino == original.st_ino  # the one file step 1 wrote, no copy
        # the step wrote its trained vector and small leaves, not the frozen matrix
        written = os.stat(tmp_path / f"step_{step}" / "state.h5").st_size
        assert 800_000 < written < 800_000 + FROZEN.nbytes // 4
    assert os.stat(tmp_path / "step_1" / "state.h5").st_nlink == 3
    # step 3 references step 1's file directly (no link of a link, no data.step2.h5)
    assert sorted(os.listdir(tmp_path / "step_3")) == ["data.step1.h5", "manifest.json",
                                                       "state.h5"]
    frozen = entry(tmp_path / "step_3", "model/frozen")
    assert frozen["external"]["file"] == "data.step1.h5"
    assert frozen["digest"].startswith("xxh3_128:")
    assert "external" not in entry(tmp_path / "step_3", "model/head/w")
    mgr.close()


def test_restore_is_bit_identical_to_a_full_save(tmp_path):
    mgr = save_steps(tmp_path / "inc", [1, 2, 3])
    full = ckpt.CheckpointManager(tmp_path / "full")
    for step in (1, 2, 3):
        full.save(step, state(step))
    for step in (1, 2, 3):
        same_tree(mgr.restore(step), full.restore(step))
    got = mgr.restore(keys=[("model", "frozen")])
    same_tree(got, {"model": {"frozen": FROZEN}})
    template = {"model": {"frozen": np.zeros_like(FROZEN),
                          "head/w": np.zeros(200_000, np.float32)},
                "step": 0, "tag": "", "bias": np.zeros(8, np.int64)}
    target = template["model"]["frozen"]
    filled = mgr.restore(into=template)
    assert filled["model"]["frozen"] is target  # read in place
    same_tree(filled, state(3))


def test_deleting_any_step_leaves_later_ones_intact(tmp_path):
    mgr = save_steps(tmp_path, [1, 2, 3, 4])
    mgr.delete(1)  # the step that wrote the shared bytes
    same_tree(mgr.restore(4), state(4))
    for step in (2, 3):
        mgr.delete(step)
    assert mgr.all_steps() == [4]
    assert os.stat(tmp_path / "step_4" / "data.step1.h5").st_nlink == 1
    same_tree(mgr.restore(), state(4))
    assert all(result.ok for result in inspection.verify(tmp_path))
    mgr.save(5, state(5))  # keeps sharing the frozen matrix through step 4's link
    assert (os.stat(tmp_path / "step_5" / "data.step1.h5").st_ino
            == os.stat(tmp_path / "step_4" / "data.step1.h5").st_ino)


def test_keep_last_over_a_long_run(tmp_path):
    mgr = save_steps(tmp_path, range(1, 31), keep=ckpt.KeepLast(2))
    assert mgr.all_steps() == [29, 30]
    assert sorted(os.listdir(tmp_path / "step_30")) == ["data.step1.h5", "manifest.json",
                                                        "state.h5"]
    # nothing else keeps step 1's file alive: two links, the two kept steps
    assert os.stat(tmp_path / "step_30" / "data.step1.h5").st_nlink == 2
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".tmp", ".trash"))]
    for step in (29, 30):
        same_tree(mgr.restore(step), state(step))
    assert all(result.ok for result in inspection.verify(tmp_path))


def test_verify_names_the_linked_file_and_key_of_damage(tmp_path):
    save_steps(tmp_path, [1, 2])
    frozen = entry(tmp_path / "step_1", "model/frozen")
    with open(tmp_path / "step_2" / "data.step1.h5", "r+b") as handle:  # the same inode
        handle.seek(frozen["offset"] + 1000)
        handle.write(b"\xff\xff\xff\xff")
    result = inspection.verify_step(tmp_path, 2)
    assert not result.ok
    assert "data.step1.h5" in result.error and "model/frozen" in result.error
    with pytest.raises(ckpt.CorruptCheckpointError, match="data.step1.h5"):
        ckpt.CheckpointManager(tmp_path).restore(2)


def test_export_and_diff_of_an_incremental_step(tmp_path):
    save_steps(tmp_path, [1, 2])
    export_step(tmp_path, 2, tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as exported:
        arrays = dict(exported)
    frozen = next(v for k, v in arrays.items() if k.endswith("frozen"))
    assert frozen.tobytes() == FROZEN.tobytes()
    statuses = {d.key: d.status for d in inspection.diff_steps(tmp_path, 1, 2)}
    assert statuses["model/frozen"] == "same"
    assert statuses["model/'head/w'"] == "changed"


def test_show_says_what_is_shared(tmp_path, capsys):
    save_steps(tmp_path, [1, 2])
    found = inspection.describe(tmp_path, 2)
    assert found.shared == (inspection.SharedFile(step=1, file="data.step1.h5", leaves=1,
                                                  nbytes=FROZEN.nbytes),)
    assert {leaf.key: leaf.shared_from for leaf in found.leaves}["model/frozen"] == 1
    assert cli.main(["show", str(tmp_path), "2"]) == 0
    out = capsys.readouterr().out
    assert "shared with step 1: 1 leaf, 2.0 MiB (hard link data.step1.h5)" in out
    assert "written: " in out and "SHARED" in out
    assert cli.main(["show", "--json", str(tmp_path), "2"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["shared"] == [{"step": 1, "file": "data.step1.h5", "leaves": 1,
                                    "nbytes": FROZEN.nbytes}]
    shared_from = {leaf["key"]: leaf.get("shared_from") for leaf in described["leaves"]}
    assert shared_from == {"model/frozen": 1, "model/'head/w'": None, "step": None,
                           "tag": None, "bias": None}


def test_plain_h5py_reads_an_incremental_step_from_another_cwd(tmp_path):
    save_steps(tmp_path / "run", [1, 2])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import sys, h5py, numpy as np\n"
            "with h5py.File(sys.argv[1], 'r') as f:\n"
            "    link = f.get('model/frozen', getlink=True)\n"
            "    print(type(link).__name__, link.filename)\n"
            "    print(f['model/frozen'][()].tobytes() == np.load(sys.argv[2]).tobytes())\n"
            "    print(float(f['model/head%2Fw'][0]))\n")
    np.save(tmp_path / "frozen.npy", FROZEN)
    out = subprocess.run([sys.executable, "-c", code,
                          str(tmp_path / "run" / "step_2" / "state.h5"),
                          str(tmp_path / "frozen.npy")], cwd=elsewhere, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[:3] == ["ExternalLink data.step1.h5", "True", "2.0"]
    with h5py.File(tmp_path / "run" / "step_2" / "state.h5", "r") as file:
        assert file["model/frozen"].shape == FROZEN.shape


def test_a_mostly_dead_file_is_not_linked(tmp_path):
    """The space rule: a file whose referenced leaves hold less than half its bytes
    is not linked (it would keep its changed leaves alive); they are written again."""
    small = np.arange(100_000, dtype=np.float32)  # 0.4 MB of a 4.4 MB file
    mgr = ckpt.CheckpointManager(tmp_path, incremental=True)
    for step in (1, 2):
        mgr.save(step, {"kept": small, "trained": np.full(1_000_000, step, np.float32)})
    assert not (tmp_path / "step_2" / "data.step1.h5").exists()
    assert "external" not in entry(tmp_path / "step_2", "kept")
    assert incremental.MIN_LIVE_FRACTION == 0.5
    same_tree(mgr.restore(2)["kept"], small)


def test_a_leaf_changed_once_is_shared_from_the_step_that_wrote_it(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, incremental=True)
    big = np.ones(300_000, np.float32)  # a keeps step 1's file mostly live
    mgr.save(1, {"a": FROZEN, "b": big})
    mgr.save(2, {"a": FROZEN, "b": big * 2})
    mgr.save(3, {"a": FROZEN, "b": big * 2})
    files = {e["path"][0]: e["external"]["file"] for e in index_of(tmp_path / "step_3")["leaves"]}
    assert files == {"a": "data.step1.h5", "b": "data.step2.h5"}
    same_tree(mgr.restore(3), {"a": FROZEN, "b": big * 2})


def test_a_full_save_or_a_damaged_previous_step_means_a_full_save(tmp_path):
    ckpt.CheckpointManager(tmp_path).save(1, state(1))  # no digests: nothing to compare
    mgr = ckpt.CheckpointManager(tmp_path, incremental=True)
    mgr.save(2, state(2))
    assert sorted(os.listdir(tmp_path / "step_2")) == ["manifest.json", "state.h5"]
    with open(tmp_path / "step_2" / "state.h5", "r+b") as handle:
        handle.truncate(10_000)  # damaged: the next save cannot trust it
    mgr.save(3, state(3))
    assert sorted(os.listdir(tmp_path / "step_3")) == ["manifest.json", "state.h5"]
    same_tree(mgr.restore(3), state(3))


def test_after_a_format_1_step_the_first_incremental_save_is_full(tmp_path):
    shutil.copytree(ROOT / "tests" / "data" / "format_v1", tmp_path, dirs_exist_ok=True)
    mgr = ckpt.CheckpointManager(tmp_path, incremental=True)
    mgr.save(4, state(4))
    mgr.save(5, state(5))
    assert sorted(os.listdir(tmp_path / "step_4")) == ["manifest.json", "state.h5"]
    assert (tmp_path / "step_5" / "data.step4.h5").exists()
    mgr.restore(3)  # still restorable next to them
    same_tree(mgr.restore(5), state(5))


def test_a_linked_file_replaced_since_means_a_full_save(tmp_path):
    save_steps(tmp_path, [1, 2])
    linked = tmp_path / "step_2" / "data.step1.h5"
    data = bytearray(linked.read_bytes())
    linked.unlink()  # a new inode under the old name: step 1's file is untouched
    linked.write_bytes(bytes(data[:-1]))
    mgr = ckpt.CheckpointManager(tmp_path, incremental=True)
    mgr.save(3, state(3))
    assert sorted(os.listdir(tmp_path / "step_3")) == ["manifest.json", "state.h5"]
    same_tree(mgr.restore(3), state(3))


def test_hard_links_refused_means_a_full_save(tmp_path, monkeypatch):
    mgr = save_steps(tmp_path, [1])

    def refuse(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    mgr.save(2, state(2))
    assert sorted(os.listdir(tmp_path / "step_2")) == ["manifest.json", "state.h5"]
    same_tree(mgr.restore(2), state(2))
    monkeypatch.undo()
    mgr.save(3, state(3))  # step 2 was digested: sharing resumes from it
    assert (tmp_path / "step_3" / "data.step2.h5").exists()


def test_unsupported_combinations_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="incremental=True needs a local directory"):
        ckpt.CheckpointManager("memory://ckpt-incremental-test", incremental=True)
    with pytest.raises(ValueError, match="incremental=True is not supported with "
                                         "distributed"):
        ckpt.CheckpointManager(tmp_path, incremental=True, distributed=True)


def test_set_aside_and_odd_keys(tmp_path):
    """Links sit at escaped dataset paths (an int key next to the same str key too),
    and setting a step aside is a rename that breaks nothing either."""
    mgr = ckpt.CheckpointManager(tmp_path, incremental=True)
    odd = {0: FROZEN, "0": FROZEN[:256] * 2, ".hidden/x": FROZEN[256:] + 1}
    for step in (1, 2, 3):
        mgr.save(step, {"odd": odd, "step": step})
    mgr.set_aside(1)
    same_tree(mgr.restore(3), {"odd": odd, "step": 3})
    with h5py.File(tmp_path / "step_3" / "state.h5", "r") as file:
        names = set(file["odd"])
        assert names == {"%i0", "0", "%2Ehidden%2Fx"}
        for name, array in zip(("%i0", "0", "%2Ehidden%2Fx"), odd.values()):
            assert isinstance(file["odd"].get(name, getlink=True), h5py.ExternalLink)
            assert file["odd"][name][()].tobytes() == array.tobytes()


def test_torch_leaves_and_tied_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    frozen = torch.from_numpy(FROZEN.copy())
    model = {"embed": frozen, "lm_head": frozen,  # tied: stored once, never shared
             "adapter": torch.zeros(100_000),
             "norm": torch.ones(2_000_000, dtype=torch.bfloat16)}  # most of the file
    mgr = ckpt.CheckpointManager(tmp_path, incremental=True)
    for step in (1, 2):
        model["adapter"] += 1
        mgr.save(step, {"model": model})
    shared = {e["path"][-1] for e in index_of(tmp_path / "step_2")["leaves"] if "external" in e}
    assert shared == {"norm"}  # the tied pair is written again; the bfloat16 norm linked
    restored = mgr.restore(2)["model"]
    assert restored["lm_head"].data_ptr() == restored["embed"].data_ptr()
    for key, value in model.items():
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value)
