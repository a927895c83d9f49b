"""Checks on an index or manifest read from disk, before any of it is trusted.

Every offset and size must lie inside the file, every dtype be a plain one spelled
as numpy writes it, every kind fit its dtype and shape, and the tree be well formed
and at most ``MAX_TREE_DEPTH`` deep; the leaves may not claim more bytes than the
file holds. Hostile or damaged input therefore fails here with a
:class:`CorruptCheckpointError` instead of a huge allocation, a hang or a crash.
This module imports nothing from h5py: it checks JSON only.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ckpt.errors import CorruptCheckpointError
from ckpt.tree import (
    CONTAINER_TAGS,
    DEFAULT_FACTORIES,
    LEAF_KINDS,
    MAPPING_TAGS,
    MAX_TREE_DEPTH,
    keystr,
)

__all__ = ["FORMAT", "VERSION", "SHARDED_VERSION", "USERBLOCK", "validate_index",
           "plain_dtype", "RANK_FILE", "LINKED_FILE", "is_data_file_name"]

FORMAT = "ckpt"
VERSION = 1
# an index whose leaves live in other files of the step (a distributed save): its
# entries say which file and leaf, or which shards, hold each leaf's bytes
SHARDED_VERSION = 2
# the only names such an index may point at: files next to it, never a path
RANK_FILE = re.compile(r"state\.rank[0-9]{1,6}\.h5")
# an incremental save's hard link to the file an earlier step wrote (named after
# that step): a plain name too, never a path
LINKED_FILE = re.compile(r"data\.step([0-9]{1,20})\.h5")
MAX_SHARDS = 65536  # per leaf: more than any job's ranks
USERBLOCK = 4096  # HDF5 needs it >= the 4 KiB data alignment; data starts after it


# ------------------------------------------------------------ validation

_INDEX_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError)


def validate_index(index: Any, path: str, file_size: int | None) -> None:
    """Check an index read from disk before trusting any of it.

    Every offset and size must lie inside the file, every dtype be a plain one and
    every size match its shape, so hostile or damaged input fails here with a
    :class:`CorruptCheckpointError` instead of a huge allocation or a crash.
    """
    try:
        _validate(index, file_size)
    except CorruptCheckpointError:
        raise
    except _INDEX_ERRORS as error:
        raise CorruptCheckpointError(path, f"invalid index: {type(error).__name__}: "
                                     f"{str(error)[:200]}") from None
    except _Invalid as error:
        raise CorruptCheckpointError(path, f"invalid index: {error.args[0]}",
                                     key=error.args[1]) from None


class _Invalid(Exception):
    pass


# What encode_leaf produces for each kind: decode_leaf is only handed these.
_SCALAR_KINDS = {"bool": "|b1", "int": "<i8", "float": "<f8", "complex": "<c16"}
_BYTE_KINDS = ("bigint", "str", "bytes", "torch_dtype", "torch_device")
_TORCH_STORAGE = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                  "c8", "c16"}
# a dtype as ``np.dtype.str`` spells it, of a kind a leaf may have (no object, no void)
_DTYPE = re.compile(r"[<>|][biufcSUmM][0-9]+(\[[0-9]*[A-Za-z]+\])?")
MAX_NDIM = 64  # numpy's limit


def _validate(index: Any, file_size: int | None) -> None:
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise _Invalid("not a ckpt index", None)
    version = index.get("version")
    if type(version) is not int or version not in (VERSION, SHARDED_VERSION):
        raise _Invalid(f"format version {str(version)[:30]} is not {VERSION} or "
                       f"{SHARDED_VERSION}", None)
    files = _check_files(index.get("files")) if version == SHARDED_VERSION else {}
    entries, packs = index["leaves"], index["packs"]
    if not isinstance(entries, list) or not isinstance(packs, list):
        raise _Invalid("leaves and packs must be lists", None)
    file_nbytes = index.get("file_nbytes", 0)
    if type(file_nbytes) is not int or file_nbytes < 0:
        raise _Invalid(f"invalid file size {str(file_nbytes)[:50]}", None)
    limit = file_size if file_size is not None else 2**62
    stored = 0  # packs and large leaves are disjoint extents of the file

    def inside(offset: Any, nbytes: Any, key: str) -> None:
        nonlocal stored
        if not (type(offset) is int and type(nbytes) is int and 0 <= nbytes
                and USERBLOCK <= offset and offset + nbytes <= limit):
            raise _Invalid(f"data at {str(offset)[:30]}+{str(nbytes)[:30]} lies outside the "
                           f"file ({limit} bytes)", key)
        stored += nbytes
        if stored > limit:  # overlapping extents: one file read many times over
            raise _Invalid(f"leaves and packs claim more bytes than the file holds ({limit})",
                           key)

    for pack in packs:
        if not isinstance(pack, dict):
            raise _Invalid("a pack is not a mapping", None)
        inside(pack["offset"], pack["nbytes"], str(pack.get("h5"))[:100])
        if not isinstance(pack["checksum"], str):
            raise _Invalid("pack checksum is not a string", str(pack.get("h5"))[:100])
    packed = [0] * len(packs)
    for entry in entries:
        if not isinstance(entry, dict):
            raise _Invalid("a leaf entry is not a mapping", None)
        key_path = entry["path"]
        if not isinstance(key_path, list) or any(type(k) not in (str, int) for k in key_path):
            raise _Invalid("key path must be a list of str and int", None)
        key = keystr(key_path)
        dtype = _dtype(entry["dtype"], key)
        shape, nbytes = entry["shape"], entry["nbytes"]
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or any(type(d) is not int or d < 0 for d in shape)):
            raise _Invalid(f"invalid shape {str(shape)[:100]}", key)
        # the second test bounds empty arrays too: numpy refuses absurd dimensions
        if (type(nbytes) is not int or math.prod(shape) * dtype.itemsize != nbytes
                or math.prod(max(d, 1) for d in shape) * dtype.itemsize > 2**62):
            raise _Invalid(f"shape {shape} of {dtype} does not hold {str(nbytes)[:30]} bytes",
                           key)
        _check_kind(entry, dtype, shape, key)
        if "alias" in entry:
            _check_alias(entry, entries, dtype, shape, key)
        elif "external" in entry or "shards" in entry:
            _check_pieces(entry, files, shape, key)
        elif "pack" in entry:
            number, start = entry["pack"], entry["pack_offset"]
            if not (type(number) is int and 0 <= number < len(packs) and type(start) is int
                    and 0 <= start and start + nbytes <= packs[number]["nbytes"]):
                raise _Invalid("packed leaf lies outside its pack", key)
            packed[number] += nbytes
            if packed[number] > packs[number]["nbytes"]:
                raise _Invalid("packed leaves claim more bytes than their pack holds", key)
        else:
            inside(entry["offset"], nbytes, key)
            if not isinstance(entry["checksum"], str):
                raise _Invalid("checksum is not a string", key)
    _check_tree(index["tree"], len(entries))


def plain_dtype(value: Any) -> np.dtype | None:
    """The dtype ``value`` spells as ``np.dtype.str`` does, if a leaf may have it, else None."""
    if type(value) is str and _DTYPE.fullmatch(value):
        try:
            dtype = np.dtype(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if dtype.str == value and dtype.itemsize > 0:
            return dtype
    return None


def _dtype(value: Any, key: str) -> np.dtype:
    dtype = plain_dtype(value)
    if dtype is None:
        raise _Invalid(f"unsupported dtype {str(value)[:50]!r}", key)
    return dtype


def _check_kind(entry: dict, dtype: np.dtype, shape: list, key: str) -> None:
    kind = entry["kind"]
    if type(kind) is not str or kind not in LEAF_KINDS:
        raise _Invalid(f"unknown leaf kind {str(kind)[:50]!r}", key)
    extra = entry.get("extra", {})
    if not isinstance(extra, dict):
        raise _Invalid("leaf extra is not a mapping", key)
    if kind in _SCALAR_KINDS:
        ok = dtype.str == _SCALAR_KINDS[kind] and shape == []
    elif kind == "npscalar":
        ok = shape == []
    elif kind in _BYTE_KINDS:
        ok = dtype.str == "|u1" and len(shape) == 1
    elif kind == "none":
        ok = dtype.str == "|u1" and shape == [0]
    elif kind == "torch_size":
        ok = dtype.str == "<i8" and len(shape) == 1
    elif kind == "torch":
        ok = (dtype.str[1:] in _TORCH_STORAGE and type(extra.get("dtype")) is str
              and type(extra.get("requires_grad", False)) is bool
              and type(extra.get("parameter", False)) is bool)
    else:
        ok = True
    if not ok:
        raise _Invalid(f"a {kind} leaf cannot be {dtype.str} of shape {shape} "
                       f"(extra {str(extra)[:50]})", key)


def is_data_file_name(name: Any) -> bool:
    """Whether ``name`` may name another data file of a step (a rank file or a link)."""
    return type(name) is str and bool(RANK_FILE.fullmatch(name) or LINKED_FILE.fullmatch(name))


def _check_files(files: Any) -> dict:
    """A sharded index's ``files``: data file name -> its size and index checksum."""
    if not isinstance(files, dict) or len(files) > MAX_SHARDS:
        raise _Invalid("a sharded index needs a mapping of its files", None)
    for name, record in files.items():
        if not is_data_file_name(name):
            raise _Invalid(f"data file name {name[:60]!r} is not state.rank<N>.h5 or "
                           "data.step<N>.h5", None)
        if (not isinstance(record, dict) or type(record.get("nbytes")) is not int
                or record["nbytes"] < 0 or not isinstance(record.get("index_checksum"), str)):
            raise _Invalid(f"file record of {name} needs nbytes and index_checksum", None)
    return files


def pieces_of(entry: dict) -> list[dict]:
    """Where the bytes of a leaf stored in other files are: ``[{file, leaf, offsets,
    shape}]`` (one piece covering it all for a leaf that one rank wrote whole)."""
    if "external" in entry:
        piece = entry["external"]
        return [{"file": piece["file"], "leaf": piece["leaf"],
                 "offsets": [0] * len(entry["shape"]), "shape": entry["shape"]}]
    return entry["shards"]


def _check_pieces(entry: dict, files: dict, shape: list, key: str) -> None:
    """The pieces of a leaf name known files and tile its global shape exactly."""
    if "external" in entry and not isinstance(entry["external"], dict):
        raise _Invalid("external must be a mapping", key)
    pieces = pieces_of(entry)
    if not isinstance(pieces, list) or len(pieces) > MAX_SHARDS:
        raise _Invalid("shards must be a list", key)
    volume = 0
    boxes = []
    for piece in pieces:
        if not isinstance(piece, dict) or piece.get("file") not in files:
            raise _Invalid("a shard names no data file of this step", key)
        leaf, offsets, extent = piece["leaf"], piece["offsets"], piece["shape"]
        if (type(leaf) is not int or leaf < 0 or not isinstance(offsets, list)
                or not isinstance(extent, list) or len(offsets) != len(shape)
                or len(extent) != len(shape)
                or any(type(v) is not int or v < 0 for v in offsets + extent)
                or any(o + n > d for o, n, d in zip(offsets, extent, shape))):
            raise _Invalid(f"shard at {str(offsets)[:40]} of shape {str(extent)[:40]} lies "
                           f"outside the leaf's shape {shape}", key)
        volume += math.prod(extent)
        if math.prod(extent):
            boxes.append((offsets, extent))
    if volume != math.prod(shape):
        raise _Invalid(f"shards hold {volume} elements, the leaf {math.prod(shape)}", key)
    # equal volume and no two boxes overlapping: the shards cover every element once
    boxes.sort()
    for i, (offsets, extent) in enumerate(boxes):
        for other, other_extent in boxes[i + 1:]:
            if shape and other[0] >= offsets[0] + extent[0]:
                break  # sorted: no later box reaches back into this one along dim 0
            if all(o < p + m and p < o + n for o, n, p, m in
                   zip(offsets, extent, other, other_extent)):
                raise _Invalid("two shards of the leaf overlap", key)


def _check_alias(entry: dict, entries: list, dtype: np.dtype, shape: list, key: str) -> None:
    """An alias (a tied tensor) must lie inside the bytes of a stored torch leaf."""
    alias = entry["alias"]
    if not isinstance(alias, dict) or entry["kind"] != "torch":
        raise _Invalid("an alias must be a mapping on a torch leaf", key)
    base, offset, strides = alias["of"], alias["offset"], alias["strides"]
    if not (type(base) is int and 0 <= base < len(entries) and isinstance(entries[base], dict)
            and "alias" not in entries[base] and entries[base].get("kind") == "torch"):
        raise _Invalid(f"alias of {str(base)[:30]}, which is no stored torch leaf", key)
    if (type(offset) is not int or offset < 0 or not isinstance(strides, list)
            or len(strides) != len(shape) or any(type(s) is not int or s < 0 for s in strides)):
        raise _Invalid("alias offset and strides must be non-negative ints, one per dimension",
                       key)
    if 0 in shape:
        return
    extent = offset + sum((d - 1) * s for d, s in zip(shape, strides)) + dtype.itemsize
    base_nbytes = entries[base].get("nbytes")
    if type(base_nbytes) is not int or extent > base_nbytes:
        raise _Invalid(f"alias reaches byte {extent} of a {str(base_nbytes)[:30]}-byte leaf",
                       key)


def _check_tree(tree: Any, count: int) -> None:
    """The treedef is well formed and refers to every leaf exactly once (no recursion)."""
    seen = bytearray(count)
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if type(node) is int:
            if not 0 <= node < count or seen[node]:
                raise _Invalid("tree and leaves do not match", None)
            seen[node] = 1
            continue
        if not isinstance(node, dict) or node.get("t") not in CONTAINER_TAGS:
            raise _Invalid(f"invalid tree node {str(node)[:50]}", None)
        children = node.get("c")
        if not isinstance(children, list):
            raise _Invalid("tree children must be a list", None)
        if node["t"] == "ddict" and (type(node.get("f")) is not str
                                     or node["f"] not in DEFAULT_FACTORIES):
            raise _Invalid(f"unknown defaultdict factory {str(node.get('f'))[:50]!r}", None)
        if node["t"] in MAPPING_TAGS:
            keys = node.get("k")
            if (not isinstance(keys, list) or len(keys) != len(children)
                    or any(type(k) not in (str, int) for k in keys)
                    or len({(type(k), k) for k in keys}) != len(keys)):
                raise _Invalid("tree keys must be distinct str and int, one per child", None)
        elif "k" in node:
            raise _Invalid("a sequence in the tree has keys", None)
        if depth >= MAX_TREE_DEPTH:
            raise _Invalid(f"tree nested deeper than {MAX_TREE_DEPTH} levels", None)
        stack.extend((child, depth + 1) for child in children)
    if not all(seen):
        raise _Invalid("tree and leaves do not match", None)
