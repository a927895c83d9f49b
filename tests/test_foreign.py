"""Plain HDF5 files other tools wrote: read in a child process (ckpt.foreign).

The damaged files here are the ones that crashed or hung ckpt before (issue 11):
each test runs the real entry point (``ckpt.load`` or the ``ckpt`` command) in a
fresh interpreter, so a segfault or an endless loop fails the test instead of
killing the suite.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import ckpt
from tests.conftest import ROOT
from tests.integration.test_fuzz import make_keras_like

TIMEOUT = 60  # seconds: far above a healthy run (< 2 s), far below "for ever"


def run_ckpt(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    """The ``ckpt`` command in a fresh interpreter; a hang fails the test."""
    return subprocess.run([sys.executable, "-m", "ckpt.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def load_in_child(path: Path) -> subprocess.CompletedProcess:
    """``ckpt.load(path)`` in a fresh interpreter; prints ``ok`` or the error's class and text."""
    code = ("import sys, ckpt\n"
            "try:\n    ckpt.load(sys.argv[1]); print('ok')\n"
            "except ckpt.CheckpointError as e:\n    print(type(e).__name__, e)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=ROOT)


def assert_one_error_line(shown: subprocess.CompletedProcess, *needles: str) -> None:
    assert shown.returncode == 2, (shown.returncode, shown.stdout, shown.stderr)
    lines = shown.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckpt: error: "), shown.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -------------------------------------------------------- damaged files


def fletcher32_chunk_size_zero(path: Path) -> None:
    """A fletcher32 dataset whose first chunk's stored size (in the B-tree) is 0."""
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", data=np.arange(4096, dtype="f4"), chunks=(1024,),
                             fletcher32=True)
        size = d.id.get_chunk_info(0).size
    data = bytearray(path.read_bytes())
    # a v1 B-tree key of a chunk: u32 size, u32 filter mask, u64 offset per dimension + 1
    at = data.find(struct.pack("<IIQQ", size, 0, 0, 0))
    assert at > 0
    data[at:at + 4] = bytes(4)
    path.write_bytes(data)


def vlen_attribute_with_damaged_heap(path: Path) -> None:
    """A variable-length string attribute whose global heap object says: free, size 0."""
    with h5py.File(path, "w") as f:
        f["w"] = np.arange(10)
        f.attrs["note"] = "a variable-length string attribute"
    data = bytearray(path.read_bytes())
    first = data.find(b"GCOL") + 16  # after "GCOL", version, reserved, collection size
    data[first:first + 2] = bytes(2)  # object index 0: free space...
    data[first + 8:first + 16] = bytes(8)  # ...of size 0: libhdf5 never moves on
    path.write_bytes(data)


def test_fletcher32_chunk_of_size_zero_is_an_error_not_a_segfault(tmp_path):
    path = tmp_path / "f32.h5"
    fletcher32_chunk_size_zero(path)
    loaded = load_in_child(path)
    assert loaded.returncode == 0, loaded.stderr  # before: -11 (SIGSEGV in read_direct)
    assert loaded.stdout.startswith("CorruptCheckpointError"), loaded.stdout
    assert str(path) in loaded.stdout and "SIGSEGV" in loaded.stdout


def test_damaged_global_heap_of_an_attribute_ends_ckpt_show(tmp_path):
    path = tmp_path / "heap.h5"
    vlen_attribute_with_damaged_heap(path)
    shown = run_ckpt("show", path)  # before: spun at 100% CPU for ever
    assert_one_error_line(shown, str(path), "damaged global heap")
    assert load_in_child(path).stdout.strip() == "ok"  # load reads no root attributes


# One flipped bit in the global heap of a Keras-style .h5 (the string attributes
# keras_version, backend and model_config live there) sent the old, in-process
# `ckpt show` into an endless loop: an object's size, or the collection's size, one
# bit larger lands libhdf5's walk on zeros that read as "free space of size 0".
KERAS_FLIPS = {"object-size": 25, "collection-size": 9}  # byte after "GCOL"; bit 0


@pytest.mark.parametrize("name", sorted(KERAS_FLIPS))
def test_a_keras_file_with_one_flipped_heap_bit_ends_ckpt_show(tmp_path, name):
    path = tmp_path / "keras.h5"
    make_keras_like(path)
    data = bytearray(path.read_bytes())
    data[data.find(b"GCOL") + KERAS_FLIPS[name]] ^= 1
    path.write_bytes(data)
    assert_one_error_line(run_ckpt("show", path), str(path), "damaged global heap")


def test_a_hung_reader_is_stopped_by_the_timeout(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    # a tenth of a second is less than the child needs to start: it is killed
    shown = run_ckpt("show", path, env={"CKPT_FOREIGN_TIMEOUT": "0.1"})
    assert_one_error_line(shown, str(path), "did not finish reading it in 0.1 s")
    with pytest.raises(ckpt.CorruptCheckpointError, match="did not finish"):
        os.environ["CKPT_FOREIGN_TIMEOUT"] = "0.1"
        try:
            ckpt.load(path)
        finally:
            del os.environ["CKPT_FOREIGN_TIMEOUT"]


# Damage that makes h5py itself raise RuntimeError or KeyError (issue 11, item 3a).
# The old in-process `ckpt show` caught only OSError around h5py's `visititems` and
# `attrs.items()`, so these ended in a traceback. Each damage edits one field the
# HDF5 format defines, found from the file's own structure (libver="earliest": a
# version 0 superblock, version 1 object headers, groups kept as symbol tables).


def plain_file(path: Path) -> dict[str, int]:
    """Groups, datasets and attributes; returns the object header address of each object."""
    with h5py.File(path, "w", libver="earliest") as f:
        f.attrs["title"] = "plain"
        f.attrs["epoch"] = np.int64(7)
        f.create_group("model").attrs["units"] = np.int32(3)
        f["model/kernel"] = np.arange(12, dtype="f4").reshape(3, 4)
        f["model/bias"] = np.zeros(3, dtype="f4")
        f["step"] = np.int64(5)
    with h5py.File(path, "r") as f:
        return {name: h5py.h5o.get_info(f[name].id).addr for name in ("/", "/model", "/step")}


def v1_messages(data: bytes, header: int) -> list[tuple[int, int]]:
    """``(type, offset of the body)`` of each message in the version 1 object header at
    ``header``, continuation chunks included."""
    assert data[header] == 1, "not a version 1 object header"
    count, = struct.unpack_from("<H", data, header + 2)
    chunks = [(header + 16, struct.unpack_from("<I", data, header + 8)[0])]
    found: list[tuple[int, int]] = []
    while chunks:
        at, length = chunks.pop(0)
        end = at + length
        while at + 8 <= end and len(found) < count:
            kind, size = struct.unpack_from("<HH", data, at)  # type, size, flags, reserved
            found.append((kind, at + 8))
            if kind == 0x10:  # continuation: address and length of the next chunk
                chunks.append(struct.unpack_from("<QQ", data, at + 8))
            at += 8 + size
    return found


def one_message(data: bytes, header: int, kind: int) -> int:
    bodies = [at for k, at in v1_messages(data, header) if k == kind]
    assert len(bodies) == 1, (kind, bodies)
    return bodies[0]


def root_group_btree_signature(path: Path) -> None:
    """The signature ("TREE") of the root group's B-tree node overwritten."""
    headers = plain_file(path)
    data = bytearray(path.read_bytes())
    btree, _ = struct.unpack_from("<QQ", data, one_message(data, headers["/"], 0x11))
    assert data[btree:btree + 4] == b"TREE"  # the symbol table message: B-tree, heap
    data[btree:btree + 4] = b"XXXX"
    path.write_bytes(data)


def dataset_datatype_version(path: Path) -> None:
    """The version of /step's datatype message set to 0 (the format defines 1 to 5)."""
    headers = plain_file(path)
    data = bytearray(path.read_bytes())
    at = one_message(data, headers["/step"], 0x03)
    assert data[at] == 0x10  # version 1 (high nibble), class 0: fixed-point
    data[at] = 0x00
    path.write_bytes(data)


def root_attribute_version(path: Path) -> None:
    """The version of the root's "title" attribute message set to 0 (defined: 1 to 3)."""
    headers = plain_file(path)
    data = bytearray(path.read_bytes())
    titles = [at for kind, at in v1_messages(data, headers["/"])
              if kind == 0x0C and data[at + 8:at + 14] == b"title\0"]  # name after 8 bytes
    assert len(titles) == 1 and data[titles[0]] == 1
    data[titles[0]] = 0
    path.write_bytes(data)


def visit_all(path: Path) -> None:
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, node: None)


def read_root_attributes(path: Path) -> None:
    with h5py.File(path, "r") as f:
        list(f.attrs.items())


# damage -> what h5py raises on the damaged file, from which call, saying what
H5PY_FAILURES = {
    "group-btree": (root_group_btree_signature, visit_all, RuntimeError,
                    "wrong B-tree signature"),
    "dataset-datatype": (dataset_datatype_version, visit_all, KeyError,
                         "bad version number for datatype message"),
    "root-attribute": (root_attribute_version, read_root_attributes, RuntimeError,
                       "bad version number for attribute message"),
}


def h5py_fails(tmp_path: Path, name: str) -> tuple[Path, str]:
    """The damaged file ``name``, once plain h5py has raised the expected error on it."""
    damage, call, error, says = H5PY_FAILURES[name]
    path = tmp_path / f"{name}.h5"
    damage(path)
    with pytest.raises(error, match=says) as raised:
        call(path)
    assert raised.type is error  # exactly that type: the path the old `ckpt show` missed
    return path, says


@pytest.mark.parametrize("name", ["group-btree", "dataset-datatype"])
def test_h5py_runtime_and_key_errors_from_the_walk_end_show_and_load(tmp_path, name):
    path, says = h5py_fails(tmp_path, name)
    shown = run_ckpt("show", path)  # before: a RuntimeError/KeyError traceback, exit 1
    assert_one_error_line(shown, str(path), says)
    with pytest.raises(ckpt.CheckpointError, match=says) as raised:
        ckpt.load(path)
    assert str(path) in str(raised.value)


def test_h5py_runtime_error_from_a_root_attribute_ends_show(tmp_path):
    path, says = h5py_fails(tmp_path, "root-attribute")
    shown = run_ckpt("show", path)  # before: a RuntimeError traceback, exit 1
    assert_one_error_line(shown, str(path), "unreadable attribute", says)
    tree = ckpt.load(path)  # load reads no root attributes: the data is all there
    assert tree["model"]["kernel"].tolist() == np.arange(12, dtype="f4").reshape(3, 4).tolist()
    assert tree["step"] == 5


# ------------------------------------------------- what load and show see


@pytest.fixture
def layouts(tmp_path) -> Path:
    """Chunked, filtered, compound, vlen, attribute-heavy and linked datasets."""
    path = tmp_path / "layouts.h5"
    with h5py.File(path, "w") as f:
        f.attrs["title"] = "layouts"
        f.attrs["sizes"] = np.arange(3)
        f.create_dataset("g/gzip", data=np.arange(1000, dtype="i4").reshape(10, 100),
                         chunks=(5, 50), compression="gzip", shuffle=True, fletcher32=True)
        f["records"] = np.array([(1, 2.5), (3, -1.0)], dtype=[("a", "<i4"), ("b", ">f8")])
        f.create_dataset("names", data=["alpha", "\u03b2"], dtype=h5py.string_dtype())
        ragged = f.create_dataset("ragged", shape=(2,), dtype=h5py.vlen_dtype(np.int16))
        ragged[0] = np.arange(3, dtype=np.int16)
        f["soft"] = h5py.SoftLink("/g/gzip")
        f["elsewhere"] = h5py.ExternalLink("other.h5", "/x")
    return path


def test_load_reads_compound_vlen_and_soft_links(layouts):
    with pytest.raises(ckpt.CorruptCheckpointError, match="external link to other.h5"):
        ckpt.load(layouts)
    tree = ckpt.load(layouts, keys=["g", "records", "names", "ragged", "soft"])
    assert tree["g"]["gzip"].tobytes() == np.arange(1000, dtype="i4").tobytes()
    assert tree["soft"].tobytes() == tree["g"]["gzip"].tobytes()
    records = tree["records"]
    assert records.dtype == np.dtype([("a", "<i4"), ("b", ">f8")])
    assert records.tolist() == [(1, 2.5), (3, -1.0)]
    assert tree["names"] == ["alpha", "\u03b2"]
    assert [a.tolist() for a in tree["ragged"]] == [[0, 1, 2], []]


def test_show_lists_what_load_returns_soft_links_included(layouts):
    shown = run_ckpt("show", layouts, "--json")
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    keys = {leaf["key"]: leaf for leaf in found["leaves"]}
    assert set(keys) == {"g/gzip", "records", "names", "ragged", "soft", "elsewhere"}
    assert keys["soft"]["shape"] == [10, 100] and keys["soft"]["dtype"] == "int32"
    assert keys["elsewhere"]["kind"] == "external link"  # listed, never followed
    assert found["metadata"] == {"title": "layouts", "sizes": [0, 1, 2]}


def test_show_and_load_of_a_fifo_do_not_block(tmp_path):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    assert_one_error_line(run_ckpt("show", fifo), str(fifo), "not a regular file")
    with pytest.raises(ckpt.CorruptCheckpointError, match="not a regular file"):
        ckpt.load(fifo)


def test_state_h5_fifo_does_not_block_verify_or_show(tmp_path):
    ckpt.CheckpointManager(tmp_path).save(1, {}, force=True)  # no leaves: nothing to bound
    state = tmp_path / "step_1" / "state.h5"
    state.unlink()
    os.mkfifo(state)
    verified = run_ckpt("verify", tmp_path)  # before: blocked for ever opening the FIFO
    assert verified.returncode == 1 and "not a regular file" in verified.stdout
    assert "state.h5" in verified.stdout
    assert_one_error_line(run_ckpt("show", tmp_path), "state.h5", "not a regular file")
    assert_one_error_line(run_ckpt("show", state), "state.h5", "not a regular file")
