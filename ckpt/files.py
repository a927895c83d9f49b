"""One-file save and load: ``ckpt.save(path, tree)`` and ``ckpt.load(path)``.

``load`` also opens plain HDF5 files other tools wrote (a Keras ``model.save("m.h5")``
or ``save_weights("m.weights.h5")``): groups become dicts, datasets arrays. Those
are read by libhdf5 in a child process with time and memory limits
(:mod:`ckpt.foreign` says why); ckpt's own files are read in process, without h5py.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from ckpt import foreign, fsutil, h5format, keras_archive, manifest
from ckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    SaveError,
)
from ckpt.restore import restore_into
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
         device: Any = None, progress: bool | None = None, into: Any = None,
         strict: bool = True) -> Any:
    """Read the tree in ``path`` (a ckpt file, or any plain HDF5 file).

    ``keys`` reads only the named subtrees from disk: a top-level key, a tuple key
    path such as ``("opt", "state")``, or a list of those. Checksums are verified
    unless ``verify=False``. ``device`` places torch tensors (default: CPU).
    ``into`` restores a ckpt file into live objects (models, optimizers, arrays)
    exactly as ``CheckpointManager.restore(into=)`` does, and returns ``into``.
    """
    path = os.fspath(path)
    _check_file(path)
    if into is not None:
        if not h5format.is_ckpt_file(path):
            raise CheckpointError(f"{path}: load(into=) needs a file ckpt.save wrote; "
                                  "read this one with load(path) and assign what you need")
        return restore_into(path, h5format.read_header_index(path), into, keys=keys,
                            strict=strict, verify=verify, progress=progress, where=path)
    if keras_archive.is_keras_archive(path):
        return _load_keras_archive(path, keys)
    if not h5format.is_ckpt_file(path):
        return foreign.load(path, keys)  # in a child process: see ckpt.foreign
    return h5format.read_tree(path, h5format.read_header_index(path), keys=keys,
                              verify=verify, device=device, progress=progress)


def _load_keras_archive(path: str, keys: Any) -> dict[str, Any]:
    """A ``.keras`` archive: ``{"config", "metadata", "weights"}`` (weights as nested dicts)."""
    tree: dict[str, Any] = keras_archive.read_json_members(path)
    with keras_archive.weights_file(path) as weights:
        if weights is not None:
            tree["weights"] = foreign.load(weights, None)  # a child process, as any HDF5
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
