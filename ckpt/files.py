"""One-file save and load: ``ckpt.save(path, tree)`` and ``ckpt.load(path)``.

``load`` also opens plain HDF5 files other tools wrote (a Keras ``model.save("m.h5")``
or ``save_weights("m.weights.h5")``): groups become dicts, datasets arrays. Those
are read by libhdf5 in a child process with time and memory limits
(:mod:`ckpt.foreign` says why); ckpt's own files are read in process, without h5py.

``path`` may also be a URL (``s3://bucket/weights.h5``, storage options from the
environment or an earlier ``ckpt.storage.open_store``): ckpt's own files are saved
and read there through the storage layer, as a manager's steps are. Files other
tools wrote are read from local paths only (libhdf5 in the child reads a file).
"""

from __future__ import annotations

import os
from typing import Any

from ckpt import foreign, h5format, keras_archive, manifest, storage
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
    """Write ``tree`` to one HDF5 file at ``path`` (a path or URL), atomically.

    On local disk the file is written next to ``path`` under a temporary name,
    fsync'd, renamed over ``path`` and the directory fsync'd; on an object store it
    is one PUT (or one multipart upload, completed at the end), which replaces the
    object atomically. Either way a crash leaves the old file or the new one, never
    a mix. ``metadata`` is any JSON-serializable value, read back by
    :func:`load_metadata`. Unsupported leaves raise ``UnsupportedTypeError`` before
    anything is written.
    """
    location = os.fspath(path)
    treedef, leaves = encode_tree(tree)
    manifest.check_metadata(metadata)
    store = storage.store_for(location)
    try:
        h5format.write_state(location, treedef, leaves, metadata=metadata, progress=progress,
                             sink=lambda size, chunks, shown: store.put_file(
                                 location, size, chunks, shown))
    except OSError as error:
        if isinstance(error, CheckpointError):
            raise
        raise SaveError.from_os_error(location, None, error) from error


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
    _check_ours_if_remote(path)
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
    _check_ours_if_remote(path)
    if not h5format.is_ckpt_file(path):
        return None
    return h5format.read_header_index(path).get("metadata")


def _check_file(path: str) -> None:
    """Refuse what is not a regular file (a FIFO would block, a device never end)."""
    try:
        storage.store_for(path).open(path).close()
    except FileNotFoundError:
        raise CheckpointNotFoundError(path) from None
    except OSError as error:  # an object store that cannot be reached, ...
        raise CorruptCheckpointError(path, f"cannot open ({error.strerror or error})") from None


def _check_ours_if_remote(path: str) -> None:
    """Files other tools wrote are read by libhdf5 (in a child), from local disk only."""
    if storage.is_url(path) and not h5format.is_ckpt_file(path):
        raise CheckpointError(f"{path} is not a file ckpt.save wrote; plain HDF5 and .keras "
                              "files are read from local paths only (copy it to local disk)")
