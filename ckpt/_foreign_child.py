"""The child process of :mod:`ckpt.foreign`: walk a foreign HDF5 file with h5py.

Run as ``python -m ckpt._foreign_child SOURCE OUT MODE KEYS MEMORY CPU`` by
:func:`ckpt.foreign.run` only. It limits its own address space and CPU time,
walks the file (``MODE`` ``load``: read the datasets ``KEYS`` names, all when
null; ``describe``: list every dataset and the root attributes, reading no data)
and writes the outcome as one ckpt state file at ``OUT``: the tree (empty when
describing) and, in its metadata, the rows, the attributes, how to rebuild
structured arrays, or the reason it refused the file. Nothing is pickled: the
parent reads ``OUT`` with ckpt's own checked reader.

The walk does not follow links or storage that lead out of the file (external
links, external raw data, virtual datasets), refuses link cycles and absurdly
deep groups, and keeps a budget on the bytes all datasets may expand to:
compression and unwritten (fill value) datasets let a small file claim terabytes.
What it cannot foresee (a crash or an endless loop inside libhdf5) is what the
process boundary is for.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from typing import Any

import h5py
import numpy as np

from ckpt import h5format
from ckpt.errors import UnsupportedTypeError
from ckpt.tree import encode_tree, normalize_keys

MAX_GROUP_DEPTH = 100
EXPANSION_LIMIT = 100  # decoded bytes per byte of file...
EXPANSION_FLOOR = 256 * 1024**2  # ...but a small file may always decode to this much
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, IndexError,
              AttributeError, OverflowError, SystemError, UnicodeError)


class Refused(Exception):
    """The file cannot be read as asked: ``(key or None, reason)``."""


class Missing(Exception):
    """``keys=`` named paths that are not in the file: ``(key paths,)``."""


class _Walk:
    """One traversal: the file, its byte budget, the groups being read, the rows found."""

    def __init__(self, path: str, file: h5py.File, read_data: bool) -> None:
        self.path = path
        self.file = file
        self.read_data = read_data
        self.size = os.stat(path).st_size
        self.budget = max(EXPANSION_FLOOR, EXPANSION_LIMIT * self.size)
        self.active: set = set()
        self.heaps_checked = False
        self.rows: list[dict] = []

    def check_heaps(self) -> None:
        """Walk the global heaps once, before anything variable-length is decoded."""
        if not self.heaps_checked:
            _check_global_heaps(self)
            self.heaps_checked = True


def load(path: str, keys: Any, file: h5py.File) -> Any:
    """The tree of ``file`` (all of it, or the subtrees ``keys`` names)."""
    walk = _Walk(path, file, read_data=True)
    if keys is None:
        return _read_group(file, walk, 0)
    out: dict[str, Any] = {}
    missing = []
    for key_path in normalize_keys(keys):
        node = _lookup(file, "/".join(str(k) for k in key_path), walk)
        if node is None:
            missing.append(list(key_path))
            continue
        target = out
        for key in key_path[:-1]:
            target = target.setdefault(str(key), {})
        target[str(key_path[-1])] = _read_node(node, walk, len(key_path))
    if missing:
        raise Missing(missing)
    return out


def describe(path: str, file: h5py.File) -> tuple[list[dict], dict[str, Any]]:
    """Every dataset the walk of :func:`load` reaches (no data read), and the root attributes."""
    walk = _Walk(path, file, read_data=False)
    _read_group(file, walk, 0)
    try:
        attributes = {}
        for name in file.attrs:
            if file.attrs.get_id(name).dtype.hasobject:
                walk.check_heaps()  # variable-length attributes live in global heaps
            attributes[name] = _jsonable(file.attrs[name])
    except _H5_ERRORS as error:
        raise Refused("/", f"unreadable attribute ({error})") from None
    return walk.rows, attributes


def _lookup(file: h5py.File, name: str, walk: _Walk) -> Any:
    """The object at ``name``, one link at a time (None when there is none)."""
    node = file
    for part in [p for p in name.split("/") if p] or [""]:
        if not part or not isinstance(node, h5py.Group):
            return None
        try:
            link = node.get(part, getlink=True)
            if link is None:
                return None
            key = f"{node.name.rstrip('/')}/{part}"
            if _external(link, key, walk):
                return None
            node = node[part]
        except _H5_ERRORS as error:
            raise Refused(name, f"unreadable link ({error})") from None
    return node


def _external(link: Any, key: str, walk: _Walk) -> bool:
    """Refuse an external link when reading; list it (unfollowed) when describing."""
    if not isinstance(link, h5py.ExternalLink):
        return False
    target = f"{link.filename}:{link.path}"
    if walk.read_data:
        raise Refused(key, f"external link to {target} (not followed: ckpt reads only "
                      "this file)")
    walk.rows.append({"key": key.lstrip("/"), "kind": "external link", "dtype": None,
                      "shape": None, "nbytes": 0, "target": target})
    return True


def _read_group(group: h5py.Group, walk: _Walk, depth: int) -> dict[str, Any]:
    key = group.name
    if depth > MAX_GROUP_DEPTH:
        raise Refused(key, f"groups nested deeper than {MAX_GROUP_DEPTH} levels")
    try:
        address = h5py.h5o.get_info(group.id).addr
        if address in walk.active:
            raise Refused(key, "a link leads back to an enclosing group (a cycle)")
        names = list(group)
    except _H5_ERRORS as error:
        raise Refused(key, f"unreadable group ({error})") from None
    walk.active.add(address)
    try:
        out = {}
        for name in names:
            key = f"{group.name.rstrip('/')}/{name}"
            try:
                if _external(group.get(name, getlink=True), key, walk):
                    continue
                node = group[name]
            except _H5_ERRORS as error:
                raise Refused(key, f"unreadable link ({error})") from None
            out[name] = _read_node(node, walk, depth + 1, key)
        return out
    finally:
        walk.active.discard(address)


def _read_node(node: Any, walk: _Walk, depth: int, key: str | None = None) -> Any:
    if isinstance(node, h5py.Group):
        return _read_group(node, walk, depth)
    key = key or node.name  # the path we came by (a soft link's own name)
    if not isinstance(node, h5py.Dataset):  # e.g. a committed datatype
        raise Refused(key, "not a group or dataset")
    try:
        if not walk.read_data:
            walk.rows.append(_row(key, node))
            return None
        return _read_dataset(node, walk, key)
    except _H5_ERRORS as error:
        raise Refused(key, f"unreadable dataset ({error})") from None


def _row(key: str, dataset: h5py.Dataset) -> dict:
    string = h5py.check_string_dtype(dataset.dtype)
    shape = dataset.shape
    size = 0 if shape is None else math.prod(shape)
    return {"key": key.lstrip("/"), "kind": "dataset",
            "dtype": "str" if string else str(dataset.dtype),
            "shape": None if shape is None else list(shape),
            "nbytes": size * dataset.dtype.itemsize}


def _read_dataset(node: h5py.Dataset, walk: _Walk, key: str) -> Any:
    plist = node.id.get_create_plist()
    if plist.get_external_count():
        raise Refused(key, "raw data stored in external files (not read: ckpt reads only "
                      "this file)")
    if node.is_virtual:
        raise Refused(key, "virtual dataset mapping other data (not read: ckpt reads only "
                      "this file)")
    if node.shape is None:
        return None  # HDF5 "null" dataspace: no value at all
    walk.budget -= math.prod(node.shape) * node.dtype.itemsize
    if walk.budget < 0:
        raise Refused(key, "datasets expand to more bytes than a file of this size may hold "
                      f"({EXPANSION_LIMIT}x the file, at least {EXPANSION_FLOOR >> 20} MiB): "
                      "a decompression bomb?")
    if node.dtype.hasobject:
        walk.check_heaps()  # variable-length data lives in global heaps
    if h5py.check_string_dtype(node.dtype):
        value = node.asstr()[()]
        return value.tolist() if isinstance(value, np.ndarray) else value
    if node.dtype.hasobject:  # vlen sequences, references, compounds holding them
        value = node[()]
        return value.tolist() if isinstance(value, np.ndarray) else value
    array = np.empty(node.shape, dtype=node.dtype)
    if array.size:
        node.read_direct(array)
    return array


def _jsonable(value: Any) -> Any:
    """An HDF5 attribute as a JSON value (bytes decoded, arrays as lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (np.ndarray, np.generic)):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _check_global_heaps(walk: _Walk) -> None:
    """Refuse global heap collections that would send libhdf5 into an endless loop.

    libhdf5 walks the objects of a collection (``H5HG__cache_heap_deserialize``) by
    their sizes; a damaged size of 0 never advances and the read never returns.
    Every collection starts with ``GCOL``: walk each one as libhdf5 would, first.
    (The parent's timeout would catch the loop too; this says why, at once.)
    """
    _, length = walk.file.id.get_create_plist().get_sizes()  # bytes of a "length"
    head = obj_head = 8 + length
    with open(walk.path, "rb") as handle:
        block, start, tail = 16 * 1024**2, 0, b""
        while True:
            data = handle.read(block)
            if not data:
                return
            buffer = tail + data
            base = start - len(tail)
            at = buffer.find(b"GCOL")
            while at >= 0:
                _walk_heap(handle, walk, base + at, head, obj_head, length)
                at = buffer.find(b"GCOL", at + 1)
            tail, start = buffer[-3:], start + len(data)


def _walk_heap(handle: Any, walk: _Walk, address: int, head: int, obj_head: int,
               length: int) -> None:
    prefix = os.pread(handle.fileno(), head, address)
    if len(prefix) < head or prefix[4:8] != b"\x01\x00\x00\x00":
        return  # not a collection (version 1, reserved zeros): bytes of some data
    size = int.from_bytes(prefix[8:8 + length], "little")
    if not head <= size <= walk.size - address:
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
            raise Refused(None, f"damaged global heap at {address} (object {index} at {p} "
                          f"has size {nbytes})")
        p += need


# ------------------------------------------------------------------ transport


def dtype_spec(dtype: np.dtype) -> Any:
    """A JSON description of a structured or opaque dtype (rebuilt by the parent)."""
    if dtype.fields is None:
        if dtype.subdtype is not None:
            base, shape = dtype.subdtype
            return {"base": dtype_spec(base), "shape": list(shape)}
        if dtype.kind == "V":
            return {"void": dtype.itemsize}
        return dtype.str
    names = list(dtype.names)
    return {"names": names, "formats": [dtype_spec(dtype.fields[n][0]) for n in names],
            "offsets": [dtype.fields[n][1] for n in names], "itemsize": dtype.itemsize}


def _portable(tree: Any, path: list, structured: list) -> Any:
    """``tree`` with arrays ckpt cannot store (structured, opaque) as their raw bytes."""
    if isinstance(tree, dict):
        return {k: _portable(v, path + [k], structured) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_portable(v, path + [i], structured) for i, v in enumerate(tree))
    if isinstance(tree, (np.ndarray, np.void)) and np.asarray(tree).dtype.kind == "V":
        array = np.ascontiguousarray(tree)
        structured.append([path, dtype_spec(array.dtype), list(array.shape)])
        return array.reshape(-1).view(np.uint8).copy()
    if isinstance(tree, np.ndarray) and tree.dtype.hasobject:
        return _portable(tree.tolist(), path, structured)
    if isinstance(tree, h5py.Reference | h5py.RegionReference):
        raise Refused("/".join(map(str, path)), "object references cannot be returned "
                      "(they point into the file)")
    return tree


def write_result(out: str, tree: Any, metadata: dict) -> None:
    """Write ``tree`` and ``metadata`` as one ckpt state file at ``out``."""
    treedef, leaves = encode_tree(tree)
    h5format.write_state(out, treedef, leaves, metadata=metadata, progress=False)


def _limit(memory: int, cpu: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file


def main(argv: list[str]) -> int:
    """Read ``argv[0]`` as ``argv[2]`` asks and write the outcome to ``argv[1]``."""
    source, out, mode, keys_json, memory, cpu = argv
    _limit(int(memory), int(cpu))
    keys = json.loads(keys_json)
    if isinstance(keys, list):
        keys = [tuple(k) if isinstance(k, list) else k for k in keys]
    try:
        try:
            file = h5py.File(source, "r")
        except _H5_ERRORS as error:
            raise Refused(None, f"not an HDF5 file ({error})") from None
        with file:
            if mode == "describe":
                rows, attributes = describe(source, file)
                write_result(out, {}, {"rows": rows, "attributes": attributes})
                return 0
            structured: list = []
            tree = _portable(load(source, keys, file), [], structured)
        write_result(out, tree, {"structured": structured})
    except UnsupportedTypeError as error:  # a value from the file ckpt cannot represent
        write_result(out, {}, {"refused": {"key": error.key, "reason": str(error)}})
    except Refused as refused:
        key, reason = refused.args
        write_result(out, {}, {"refused": {"key": key, "reason": reason}})
    except Missing as missing:
        write_result(out, {}, {"missing": missing.args[0]})
    except MemoryError:
        write_result(out, {}, {"refused": {"key": None, "reason": "reading it needs more "
                                           "memory than the reader may use"}})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
