"""One-file save and load: ``ckpt.save(path, tree)`` and ``ckpt.load(path)``.

``load`` also opens plain HDF5 files other tools wrote (a Keras ``model.save("m.h5")``
or ``save_weights("m.weights.h5")``): groups become dicts, datasets arrays.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ckpt import fsutil, h5format, keras_archive, manifest
from ckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    SaveError,
)
from ckpt.tree import encode_tree, normalize_keys

__all__ = ["save", "load", "load_metadata"]


def save(path: str | os.PathLike[str], tree: Any, *, metadata: Any = None,
         progress: bool | None = None) -> None:
    """Write ``tree`` to one HDF5 file at ``path``, atomically.

    The file is written next to ``path`` under a temporary name, fsync'd, renamed
    over ``path`` and the directory fsync'd: a crash leaves the old file or the new
    one, never a mix. ``metadata`` is any JSON-serializable value, read back by
    :func:`load_metadata`. Unsupported leaves raise ``UnsupportedTypeError`` before
    anything is written.
    """
    path = Path(path)
    treedef, leaves = encode_tree(tree)
    manifest.check_metadata(metadata)
    tmp = path.with_name(fsutil.tmp_name(path.name))
    try:
        h5format.write_state(tmp, treedef, leaves, metadata=metadata, progress=progress)
        os.replace(tmp, path)
        fsutil.fsync_dir(path.parent)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and not isinstance(error, CheckpointError):
            raise SaveError.from_os_error(path, None, error) from error
        raise


def load(path: str | os.PathLike[str], *, keys: Any = None, verify: bool = True,
         device: Any = None, progress: bool | None = None) -> Any:
    """Read the tree in ``path`` (a ckpt file, or any plain HDF5 file).

    ``keys`` reads only the named subtrees from disk: a top-level key, a tuple key
    path such as ``("opt", "state")``, or a list of those. Checksums are verified
    unless ``verify=False``. ``device`` places torch tensors (default: CPU).
    """
    path = os.fspath(path)
    _check_file(path)
    if keras_archive.is_keras_archive(path):
        return _load_keras_archive(path, keys)
    if not h5format.is_ckpt_file(path):
        return _load_foreign(path, keys)
    return h5format.read_tree(path, h5format.read_header_index(path), keys=keys,
                              verify=verify, device=device, progress=progress)


def _load_keras_archive(path: str, keys: Any) -> dict[str, Any]:
    """A ``.keras`` archive: ``{"config", "metadata", "weights"}`` (weights as nested dicts)."""
    tree: dict[str, Any] = keras_archive.read_json_members(path)
    with keras_archive.weights_file(path) as weights:
        if weights is not None:
            tree["weights"] = _load_foreign(weights, None)
    if keys is None:
        return tree
    out: dict[str, Any] = {}
    for key_path in normalize_keys(keys):
        node, target = tree, out
        for depth, key in enumerate(key_path):
            if not isinstance(node, dict) or key not in node:
                h5format.raise_missing_keys(path, [key_path])
            node = node[key]
            target = target.setdefault(key, {}) if depth < len(key_path) - 1 else target
        target[key_path[-1]] = node
    return out


def load_metadata(path: str | os.PathLike[str]) -> Any:
    """The ``metadata`` given to :func:`save` for the file at ``path``.

    A plain HDF5 file written by another tool has none: the result is None.
    """
    path = os.fspath(path)
    _check_file(path)
    if not h5format.is_ckpt_file(path):
        return None
    return h5format.read_header_index(path).get("metadata")


def _check_file(path: str) -> None:
    """Refuse what is not a regular file (a FIFO would block, a device never end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointNotFoundError(path) from None
    except OSError as error:  # a symlink loop, no permission, ...
        raise CorruptCheckpointError(path, f"cannot open ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        raise CorruptCheckpointError(path, "not a regular file")


# ---------------------------------------------------------- plain HDF5

# A file from elsewhere may be damaged or hostile. It is read without following
# links or storage that lead out of it (external links, external raw data, virtual
# datasets), without recursing through link cycles or absurdly deep groups, and
# with a budget on the bytes all datasets may expand to: compression and unwritten
# (fill value) datasets let a small file claim terabytes.
MAX_GROUP_DEPTH = 100
EXPANSION_LIMIT = 100  # decoded bytes per byte of file...
EXPANSION_FLOOR = 256 * 1024**2  # ...but a small file may always decode to this much
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, IndexError)


class _Foreign:
    """State of one traversal: the file's name, its byte budget, the groups being read."""

    def __init__(self, path: str, file: h5py.File) -> None:
        self.path = path
        self.file = file
        self.size = os.stat(path).st_size
        self.budget = max(EXPANSION_FLOOR, EXPANSION_LIMIT * self.size)
        self.active: set = set()
        self.heaps_checked = False

    def fail(self, key: str | None, reason: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(self.path, reason, key=key)


def _load_foreign(path: str, keys: Any) -> Any:
    try:
        file = h5py.File(path, "r")
    except _H5_ERRORS as error:
        raise CorruptCheckpointError(path, f"not an HDF5 file ({error})") from None
    with file:
        reader = _Foreign(path, file)
        if keys is None:
            return _read_group(file, reader, 0)
        out: dict[str, Any] = {}
        for key_path in normalize_keys(keys):
            node = _lookup(file, "/".join(str(k) for k in key_path), reader)
            if node is None:
                h5format.raise_missing_keys(path, [key_path])
            target = out
            for key in key_path[:-1]:
                target = target.setdefault(str(key), {})
            target[str(key_path[-1])] = _read_node(node, reader, len(key_path))
        return out


def _lookup(file: h5py.File, name: str, reader: _Foreign) -> Any:
    """The object at ``name``, one link at a time (None when there is none)."""
    node = file
    for part in [p for p in name.split("/") if p] or [""]:
        if not part or not isinstance(node, h5py.Group):
            return None
        try:
            link = node.get(part, getlink=True)
            if link is None:
                return None
            _check_link(link, f"{node.name.rstrip('/')}/{part}", reader)
            node = node[part]
        except _H5_ERRORS as error:
            raise reader.fail(name, f"unreadable link ({error})") from None
    return node


def _check_link(link: Any, key: str, reader: _Foreign) -> None:
    if isinstance(link, h5py.ExternalLink):
        raise reader.fail(key, f"external link to {link.filename}:{link.path} (not followed: "
                          "ckpt reads only this file)")


def _read_group(group: h5py.Group, reader: _Foreign, depth: int) -> dict[str, Any]:
    key = group.name
    if depth > MAX_GROUP_DEPTH:
        raise reader.fail(key, f"groups nested deeper than {MAX_GROUP_DEPTH} levels")
    try:
        address = h5py.h5o.get_info(group.id).addr
        if address in reader.active:
            raise reader.fail(key, "a link leads back to an enclosing group (a cycle)")
        names = list(group)
    except _H5_ERRORS as error:
        raise reader.fail(key, f"unreadable group ({error})") from None
    reader.active.add(address)
    try:
        out = {}
        for name in names:
            key = f"{group.name.rstrip('/')}/{name}"
            try:
                _check_link(group.get(name, getlink=True), key, reader)
                node = group[name]
            except _H5_ERRORS as error:
                raise reader.fail(key, f"unreadable link ({error})") from None
            out[name] = _read_node(node, reader, depth + 1)
        return out
    finally:
        reader.active.discard(address)


def _read_node(node: Any, reader: _Foreign, depth: int) -> Any:
    if isinstance(node, h5py.Group):
        return _read_group(node, reader, depth)
    key = node.name
    if not isinstance(node, h5py.Dataset):  # e.g. a committed datatype
        raise reader.fail(key, "not a group or dataset")
    try:
        plist = node.id.get_create_plist()
        if plist.get_external_count():
            raise reader.fail(key, "raw data stored in external files (not read: ckpt reads "
                              "only this file)")
        if node.is_virtual:
            raise reader.fail(key, "virtual dataset mapping other data (not read: ckpt reads "
                              "only this file)")
        if node.shape is None:
            return None  # HDF5 "null" dataspace: no value at all
        reader.budget -= math.prod(node.shape) * node.dtype.itemsize
        if reader.budget < 0:
            raise reader.fail(key, "datasets expand to more bytes than a file of this size "
                              f"may hold ({EXPANSION_LIMIT}x the file, at least "
                              f"{EXPANSION_FLOOR >> 20} MiB): a decompression bomb?")
        if node.dtype.hasobject and not reader.heaps_checked:
            _check_global_heaps(reader)  # variable-length data lives in global heaps
            reader.heaps_checked = True
        if node.dtype.kind == "O" or h5py.check_string_dtype(node.dtype):
            value = node.asstr()[()] if h5py.check_string_dtype(node.dtype) else node[()]
            return value.tolist() if isinstance(value, np.ndarray) else value
        array = np.empty(node.shape, dtype=node.dtype)
        if array.size:
            node.read_direct(array)
        return array
    except _H5_ERRORS as error:
        raise reader.fail(key, f"unreadable dataset ({error})") from None


def _check_global_heaps(reader: _Foreign) -> None:
    """Refuse global heap collections that would send libhdf5 into an endless loop.

    libhdf5 walks the objects of a collection (``H5HG__cache_heap_deserialize``) by
    their sizes; a damaged size of 0 never advances and the read never returns.
    Every collection starts with ``GCOL``: walk each one as libhdf5 would, first.
    """
    _, length = reader.file.id.get_create_plist().get_sizes()  # bytes of a "length"
    head = obj_head = 8 + length
    with open(reader.path, "rb") as handle:
        block, start, tail = 16 * 1024**2, 0, b""
        while True:
            data = handle.read(block)
            if not data:
                return
            buffer = tail + data
            base = start - len(tail)
            at = buffer.find(b"GCOL")
            while at >= 0:
                _walk_heap(handle, reader, base + at, head, obj_head, length)
                at = buffer.find(b"GCOL", at + 1)
            tail, start = buffer[-3:], start + len(data)


def _walk_heap(handle: Any, reader: _Foreign, address: int, head: int, obj_head: int,
               length: int) -> None:
    prefix = os.pread(handle.fileno(), head, address)
    if len(prefix) < head or prefix[4:8] != b"\x01\x00\x00\x00":
        return  # not a collection (version 1, reserved zeros): bytes of some data
    size = int.from_bytes(prefix[8:8 + length], "little")
    if not head <= size <= reader.size - address:
        return  # libhdf5 fails on its own reading past the end
    chunk = os.pread(handle.fileno(), size, address)
    p = head
    while p < size:
        if p + obj_head > size:
            return  # too small for an object: free space
        index = int.from_bytes(chunk[p:p + 2], "little")
        nbytes = int.from_bytes(chunk[p + 8:p + 8 + length], "little")
        need = obj_head + -(-nbytes // 8) * 8 if index else nbytes
        if need == 0 or p + need > size:
            raise reader.fail(None, f"damaged global heap at {address} (object {index} at "
                              f"{p} has size {nbytes})")
        p += need
