"""One-file save and load: ``ckpt.save(path, tree)`` and ``ckpt.load(path)``.

``load`` also opens plain HDF5 files other tools wrote (a Keras ``model.save("m.h5")``
or ``save_weights("m.weights.h5")``): groups become dicts, datasets arrays.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ckpt import fsutil, h5format
from ckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    SaveError,
    StateMismatchError,
)
from ckpt.tree import decode_tree, encode_tree, keystr, leaf_paths, normalize_keys, select

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
    _check_json(metadata)
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


def _check_json(metadata: Any) -> None:
    import json

    from ckpt.errors import UnsupportedTypeError

    try:
        json.dumps(metadata, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise UnsupportedTypeError("metadata", type(metadata).__name__,
                                   f"metadata must be JSON-serializable ({error})") from None


def load(path: str | os.PathLike[str], *, keys: Any = None, verify: bool = True,
         device: Any = None, progress: bool | None = None) -> Any:
    """Read the tree in ``path`` (a ckpt file, or any plain HDF5 file).

    ``keys`` reads only the named subtrees from disk: a top-level key, a tuple key
    path such as ``("opt", "state")``, or a list of those. Checksums are verified
    unless ``verify=False``. ``device`` places torch tensors (default: CPU).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(path)
    if not h5format.is_ckpt_file(path):
        return _load_foreign(path, keys)
    index = h5format.read_header_index(path)
    treedef, wanted = index["tree"], None
    if keys is not None:
        treedef, missing = select(treedef, keys)
        _raise_missing(path, missing)
        wanted = {number for _, number in leaf_paths(treedef)}
    arrays = h5format.read_leaves(path, index, wanted, verify=verify, progress=progress)
    return decode_tree(treedef, index["leaves"], arrays, device)


def load_metadata(path: str | os.PathLike[str]) -> Any:
    """The ``metadata`` given to :func:`save` for the file at ``path``.

    A plain HDF5 file written by another tool has none: the result is None.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(path)
    if not h5format.is_ckpt_file(path):
        return None
    return h5format.read_header_index(path).get("metadata")


def _raise_missing(path: str, missing: list) -> None:
    if missing:
        raise StateMismatchError(path, [(keystr(p), "missing", "requested by keys=",
                                         "nothing in the checkpoint") for p in missing])


# ---------------------------------------------------------- plain HDF5


def _load_foreign(path: str, keys: Any) -> Any:
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise CorruptCheckpointError(path, f"not an HDF5 file ({error})") from None
    with file:
        if keys is None:
            return _read_group(file, path)
        out: dict[str, Any] = {}
        for key_path in normalize_keys(keys):
            name = "/".join(str(k) for k in key_path)
            if name not in file:
                _raise_missing(path, [key_path])
            node = file[name]
            target = out
            for key in key_path[:-1]:
                target = target.setdefault(str(key), {})
            target[str(key_path[-1])] = _read_node(node, path)
        return out


def _read_group(group: h5py.Group, path: str) -> dict[str, Any]:
    return {name: _read_node(group[name], path) for name in group}


def _read_node(node: Any, path: str) -> Any:
    if isinstance(node, h5py.Group):
        return _read_group(node, path)
    if not isinstance(node, h5py.Dataset):  # e.g. a dangling external link
        raise CorruptCheckpointError(path, "not a group or dataset", key=node.name)
    try:
        if node.dtype.kind == "O" or h5py.check_string_dtype(node.dtype):
            value = node.asstr()[()] if h5py.check_string_dtype(node.dtype) else node[()]
            return value.tolist() if isinstance(value, np.ndarray) else value
        array = np.empty(node.shape, dtype=node.dtype) if node.shape is not None else None
        if array is None:
            return None  # HDF5 "null" dataspace: no value at all
        if array.size:
            node.read_direct(array)
        return array
    except (OSError, ValueError, TypeError) as error:
        raise CorruptCheckpointError(path, f"unreadable dataset ({error})",
                                     key=node.name) from None
