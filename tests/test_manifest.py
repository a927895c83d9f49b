"""The manifest (ckpt.manifest): format version 2, version-1 directories, hostile fields.

Version 2 stores the leaf index once, in ``state.h5``; the manifest records the
file's size and the index's checksum. Every reader goes through
``manifest.open_data``, so restore, ``ckpt verify``, ``show``, ``export`` and ``diff``
agree on damage. Manifest fields that used to pass validation and then crashed
``ckpt ls``/``show`` now make the step a damaged one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt import manifest
from tests.conftest import ROOT, assert_tree_equal
from tests.step_files import edit_index, read_index, split_state

V1_FIXTURE = ROOT / "tests" / "data" / "format_v1"  # written by format-version-1 code


def v1_state() -> dict:
    """The state the version-1 fixture holds (its step 3)."""
    return {"model": {"w": np.arange(16384, dtype=np.float32).reshape(128, 128),
                      "b": np.linspace(0, 1, 7)},
            "opt": {"state": {0: {"m": np.ones(3, np.float16)}}, "lr": 0.1},
            "names": ["a", "\u00e9"], "blob": b"\x00\x01", "none": None, "big": 2**70,
            "step": 7}


def run_ckpt(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckpt.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def assert_error_line(result: subprocess.CompletedProcess, *needles: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("ckpt: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def two_steps(directory: Path) -> ckpt.CheckpointManager:
    mgr = ckpt.CheckpointManager(directory, keep=ckpt.KeepLast(5))
    for step in (1, 2):
        mgr.save(step, {"w": np.full(20_000, step, np.float32), "step": step},
                 metrics={"loss": 1 / step})
    return mgr


def edit_manifest(step_dir: Path, **fields) -> None:
    path = step_dir / "manifest.json"
    record = json.loads(path.read_text())
    record.update(fields)
    path.write_text(json.dumps(record))


# ------------------------------------------------------ format version 2


def test_new_manifests_are_version_2_and_hold_no_leaf_index(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, {"leaves": [np.float32(i) for i in range(5000)]}, force=True)
    step_dir = tmp_path / "step_1"
    record = json.loads((step_dir / "manifest.json").read_text())
    assert record["version"] == 2
    data = (step_dir / "state.h5").read_bytes()
    _, index_bytes = split_state(data)
    assert record["files"] == {"state.h5": {"nbytes": len(data),
                                            "index_checksum": ckpt.h5format.checksum(index_bytes)}}
    assert len(read_index(step_dir)["leaves"]) == 5000  # the index lives in state.h5 only
    assert (step_dir / "manifest.json").stat().st_size < 1024  # whatever the leaf count
    assert mgr.info(1).nbytes == len(data)


def test_version_1_directories_stay_readable(tmp_path):
    directory = Path(shutil.copytree(V1_FIXTURE, tmp_path / "v1"))
    assert json.loads((directory / "step_3" / "manifest.json").read_text())["version"] == 1
    mgr = ckpt.CheckpointManager(directory)
    assert mgr.all_steps() == [3] and mgr.info(3).metrics == {"val_loss": 0.5}
    assert_tree_equal(mgr.restore(3), v1_state())
    mgr.save(4, {"x": np.ones(3)}, force=True)  # a new step in an old directory: version 2
    assert json.loads((directory / "step_4" / "manifest.json").read_text())["version"] == 2
    assert_tree_equal(mgr.restore(), {"x": np.ones(3)})
    verified = run_ckpt("verify", directory)
    assert verified.returncode == 0, verified.stdout
    assert "step 3: OK (10 leaves" in verified.stdout and "step 4: OK" in verified.stdout
    shown = run_ckpt("show", directory, 3)
    assert shown.returncode == 0 and "model/w" in shown.stdout, shown.stderr
    exported = run_ckpt("export", directory, 3, tmp_path / "v1.npz")
    assert exported.returncode == 0, exported.stderr
    with np.load(tmp_path / "v1.npz", allow_pickle=False) as npz:
        assert npz["model/w"].tobytes() == v1_state()["model"]["w"].tobytes()
    assert run_ckpt("diff", directory, 3, 4).returncode == 0


def test_a_flipped_byte_in_the_index_fails_every_reader_alike(tmp_path):
    two_steps(tmp_path)
    step_dir = tmp_path / "step_2"
    header, index_bytes = split_state((step_dir / "state.h5").read_bytes())
    with open(step_dir / "state.h5", "r+b") as handle:  # a byte inside the index's JSON
        handle.seek(header["index_offset"] + len(index_bytes) // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x04]))
    with pytest.raises(ckpt.CorruptCheckpointError) as restored:
        ckpt.CheckpointManager(tmp_path).restore(2)
    assert restored.value.key == "/.ckpt/index" and "index checksum" in str(restored.value)
    verified = run_ckpt("verify", tmp_path, 2)
    assert verified.returncode == 1 and "index checksum mismatch" in verified.stdout
    for command in (("export", tmp_path, 2, tmp_path / "out.npz"), ("diff", tmp_path, 1, 2),
                    ("show", tmp_path, 2)):
        assert_error_line(run_ckpt(*command), "state.h5", "/.ckpt/index",
                          "index checksum mismatch")
    assert ckpt.CheckpointManager(tmp_path).restore(1)["step"] == 1


def test_a_replaced_index_must_match_the_manifest(tmp_path):
    two_steps(tmp_path)
    step_dir = tmp_path / "step_2"
    manifest_before = (step_dir / "manifest.json").read_bytes()
    # a self-consistent state.h5 (header checksum matches) the manifest does not vouch for
    edit_index(step_dir, lambda index: index["leaves"][0].update(shape=[10_000, 2]))
    (step_dir / "manifest.json").write_bytes(manifest_before)
    with pytest.raises(ckpt.CorruptCheckpointError, match="the manifest says"):
        ckpt.CheckpointManager(tmp_path).restore(2)
    verified = run_ckpt("verify", tmp_path, 2)
    assert verified.returncode == 1 and "bytes, the manifest says" in verified.stdout


# ------------------------------------------------ fields that crashed ls


HOSTILE_FIELDS = {
    "retention-n-1.5": {"retention": [{"policy": "KeepLast", "n": 1.5}]},
    "retention-n-1e308": {"retention": [{"policy": "KeepLast", "n": 1e308}]},
    "retention-not-a-list": {"retention": {"policy": "KeepLast", "n": 2}},
    "retention-seconds-nan": {"retention": [{"policy": "KeepEvery", "seconds": float("nan")}]},
    "metric-list": {"metrics": {"loss": [0.1, 0.2]}},
    "metric-huge-int": {"metrics": {"loss": 10**400}},
    "time-1e300": {"time": 1e300},
    "time-negative": {"time": -5.0},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FIELDS))
def test_manifest_fields_that_crashed_ls_make_the_step_damaged(tmp_path, name):
    two_steps(tmp_path)
    edit_manifest(tmp_path / "step_2", **HOSTILE_FIELDS[name])
    mgr = ckpt.CheckpointManager(tmp_path)
    assert mgr.all_steps() == [1]
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        mgr.restore(2)
    assert info.value.step == 2 and "manifest.json" in str(info.value)
    listed = run_ckpt("ls", tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == "" and "step_2 is not a valid checkpoint" in listed.stdout
    assert run_ckpt("ls", tmp_path, "--json").returncode == 0
    assert run_ckpt("show", tmp_path).returncode == 0  # the latest valid step: 1
    assert_error_line(run_ckpt("show", tmp_path, 2), "step_2", "manifest.json")


def test_unknown_policies_in_the_retention_record_pass(tmp_path):
    two_steps(tmp_path)
    edit_manifest(tmp_path / "step_2", retention=[{"policy": "MyPolicy", "window": [1, 2]}])
    assert ckpt.CheckpointManager(tmp_path).all_steps() == [1, 2]
    assert run_ckpt("ls", tmp_path).returncode == 0


# --------------------------------------------------- unreadable manifests


def test_a_manifest_failing_with_eio_is_a_damaged_step(tmp_path, caplog):
    two_steps(tmp_path)
    path = tmp_path / "step_2" / "manifest.json"
    path.unlink()
    path.symlink_to("/proc/self/mem")  # a regular file whose read() fails with EIO
    with caplog.at_level("WARNING", logger="ckpt"):
        mgr = ckpt.CheckpointManager(tmp_path)  # before: a bare OSError from here
    assert mgr.all_steps() == [1]
    assert "step 2 is not a valid checkpoint" in caplog.text
    assert "Input/output error" in caplog.text
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mgr.restore()["step"] == 1
    assert any("skipping step 2" in str(w.message) for w in caught)
    with pytest.raises(ckpt.CorruptCheckpointError, match="Input/output error"):
        mgr.restore(2)
    listed = run_ckpt("ls", tmp_path)
    assert listed.returncode == 0 and "Input/output error" in listed.stdout


def test_an_oversized_manifest_is_refused_unread(tmp_path):
    two_steps(tmp_path)
    path = tmp_path / "step_2" / "manifest.json"
    text = path.read_bytes()
    path.write_bytes(text[:-1] + b" " * (64 * 1024**2) + b"}")  # valid JSON, 64 MiB
    started = time.perf_counter()
    mgr = ckpt.CheckpointManager(tmp_path)
    assert mgr.all_steps() == [1]
    assert time.perf_counter() - started < 5  # the 87 s of the issue: never parsed
    with pytest.raises(ckpt.CorruptCheckpointError, match="larger than a manifest can be"):
        mgr.restore(2)
    path.write_bytes(text[:-1] + b" " * (manifest.MAX_MANIFEST_BYTES - len(text)) + b"}")
    assert ckpt.CheckpointManager(tmp_path).all_steps() == [1, 2]  # at the limit: read


def test_version_1_manifests_may_be_as_large_as_their_state_file(tmp_path):
    directory = Path(shutil.copytree(V1_FIXTURE, tmp_path / "v1"))
    path = directory / "step_3" / "manifest.json"
    state_size = (directory / "step_3" / "state.h5").stat().st_size
    text = path.read_bytes()
    padding = manifest.MAX_MANIFEST_BYTES + state_size - len(text)
    path.write_bytes(text[:-1] + b" " * padding + b"}")
    assert ckpt.CheckpointManager(directory).all_steps() == [3]
    path.write_bytes(text[:-1] + b" " * (padding + 1) + b"}")
    assert ckpt.CheckpointManager(directory).all_steps() == []


def test_metadata_larger_than_a_manifest_holds_is_refused_at_save(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(ckpt.UnsupportedTypeError, match="at most 4194304"):
        mgr.save(1, {"x": 1}, metadata={"blob": "x" * manifest.MAX_METADATA_BYTES}, force=True)
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_listing_reads_no_data_file(tmp_path):
    two_steps(tmp_path)
    for step in (1, 2):  # a FIFO blocks whoever opens it: listing must not
        state = tmp_path / f"step_{step}" / "state.h5"
        state.unlink()
        os.mkfifo(state)
    code = ("import sys, ckpt\n"
            "opened = []\n"
            "sys.addaudithook(lambda e, a: e == 'open' and opened.append(str(a[0])))\n"
            "print(ckpt.CheckpointManager(sys.argv[1]).all_steps())\n"
            "from ckpt import inspection\n"
            "print([r.step for r in inspection.list_steps(sys.argv[1])])\n"
            "print(sum('state.h5' in p for p in opened))\n")
    listed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert listed.stdout.split("\n")[:3] == ["[1, 2]", "[1, 2]", "0"], listed.stderr
