"""Test helpers that read and edit the files of a step directory as they are on disk.

Since format version 2 a step's leaf index lives only in ``state.h5`` (the ckpt
header points at it) and the manifest records the file's size and the index's
checksum. :func:`edit_index` rewrites that index *consistently* (the header and the
manifest updated to match), so that a test reaches the checks behind the checksums.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ckpt import fsutil, h5format, manifest


def split_state(data: bytes) -> tuple[dict, bytes]:
    """``(header, index bytes)`` of a ckpt state file's contents."""
    header = json.loads(data[len(h5format.MAGIC):h5format.USERBLOCK].decode().rstrip())
    start = header["index_offset"]
    return header, data[start:start + header["index_nbytes"]]


def embed_index(data: bytes, index_bytes: bytes, header_text: bytes | None = None) -> bytes:
    """``data`` with ``index_bytes`` appended and the header pointing at them."""
    offset = len(data)
    if header_text is None:
        header_text = json.dumps({"version": 1, "index_offset": offset,
                                  "index_nbytes": len(index_bytes),
                                  "index_checksum": h5format.checksum(index_bytes)}).encode()
    block = (h5format.MAGIC + header_text)[:h5format.USERBLOCK].ljust(h5format.USERBLOCK, b" ")
    return block + data[h5format.USERBLOCK:] + index_bytes


def read_index(step_dir: str | Path) -> dict:
    """The leaf index stored in ``step_dir/state.h5``."""
    return json.loads(split_state((Path(step_dir) / "state.h5").read_bytes())[1])


def leaf_entry(step_dir: str | Path, key: list) -> dict:
    """The index entry of the leaf at key path ``key``."""
    return next(e for e in read_index(step_dir)["leaves"] if e["path"] == key)


def authenticate(step_dir: str | Path, data: bytes, manifest: bytes | None = None) -> bytes:
    """A manifest (the step's own unless given) that vouches for state file ``data``."""
    step_dir = Path(step_dir)
    record = json.loads(manifest if manifest is not None
                        else (step_dir / "manifest.json").read_bytes())
    _, index_bytes = split_state(data)
    record["files"]["state.h5"] = {"nbytes": len(data),
                                   "index_checksum": h5format.checksum(index_bytes)}
    return json.dumps(record, separators=(",", ":")).encode()


def edit_index(step_dir: str | Path, change: Callable[[dict], object]) -> None:
    """Apply ``change`` to the step's index and rewrite state.h5 and the manifest to match."""
    step_dir = Path(step_dir)
    state = step_dir / "state.h5"
    data = state.read_bytes()
    index = json.loads(split_state(data)[1])
    change(index)
    new = embed_index(data, json.dumps(index, separators=(",", ":")).encode())
    state.write_bytes(new)
    (step_dir / "manifest.json").write_bytes(authenticate(step_dir, new))


def listing_truth(directory: str | Path) -> list[tuple]:
    """``(step, time, metrics, nbytes, metadata)`` of every valid checkpoint, from
    reading each manifest (no cache): what any listing must agree with."""
    out = []
    for step, path in fsutil.step_dirs(directory).items():
        try:
            info = manifest.step_info(manifest.read(path, step), path)
        except Exception:  # noqa: BLE001 - damaged or gone: not a checkpoint
            continue
        out.append((info.step, info.time, info.metrics, info.nbytes, info.metadata))
    return out


def assert_listing_is_true(directory: str | Path) -> None:
    """A fresh manager (which uses the listing cache) lists what the manifests say."""
    import ckpt

    listed = [(i.step, i.time, i.metrics, i.nbytes, i.metadata)
              for i in ckpt.CheckpointManager(directory).infos()]
    assert listed == listing_truth(directory)
    assert ckpt.CheckpointManager(directory).all_steps() == [row[0] for row in listed]
