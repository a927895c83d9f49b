"""Flatten a state tree into leaves and a JSON structure, and build it back.

A state is a tree of containers (dict, OrderedDict, list, tuple) whose leaves are
numpy arrays and scalars, Python scalars, str, bytes, None, torch tensors, and
*stateful* objects (anything with ``state_dict``/``load_state_dict``), which are
stored as their state dict.

The structure ("treedef") is plain JSON so that reading a checkpoint never runs
code: a leaf is its index (a JSON int); a container is ``{"t": type, "c": children}``
plus ``"k": keys`` for mappings. JSON keeps str and int keys apart, so a dict with
both ``0`` and ``"0"`` round-trips.

Every leaf is encoded as ``(kind, array, extra)``: a numpy array holding its bytes,
a kind tag saying what Python type to rebuild, and a small JSON dict for anything
else the kind needs (e.g. a torch dtype).
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ckpt import _adapters
from ckpt._types import KeyPath, is_stateful
from ckpt.errors import CorruptCheckpointError, UnsupportedTypeError

__all__ = [
    "flatten",
    "unflatten",
    "encode_leaf",
    "decode_leaf",
    "keystr",
    "select",
    "leaf_paths",
    "normalize_keys",
    "encode_tree",
    "decode_tree",
]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Deeper trees cannot be rebuilt without recursing too far; refused at save and
# (for hostile files) at restore.
MAX_TREE_DEPTH = 256
# dtype kinds a numpy array may have: bool, ints, floats, complex, datetimes,
# fixed-width bytes and unicode. Object ("O") and structured ("V") are refused.
_ARRAY_KINDS = set("biufcmMSU")
_CONTAINER_TYPES = {dict: "dict", OrderedDict: "odict", list: "list", tuple: "tuple"}
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-:]*$")


def keystr(path: Iterable[str | int]) -> str:
    """Render a key path for messages: ``opt/state/0/'a/b'``; the root is ``<root>``.

    String keys that are not plain identifiers are quoted, so ``'0'`` (a str) and
    ``0`` (an int) read differently, and a ``/`` inside a key is visible as such.
    """
    parts = []
    for key in path:
        if isinstance(key, str) and not _PLAIN_KEY.match(key):
            parts.append(repr(key))
        else:
            parts.append(str(key))
    return "/".join(parts) if parts else "<root>"


def flatten(tree: Any) -> tuple[Any, list[tuple[KeyPath, Any]]]:
    """Split ``tree`` into a JSON treedef and a list of ``(key path, leaf)``.

    Stateful objects are replaced by their ``state_dict()``. Raises
    :class:`UnsupportedTypeError` naming the key path of anything that is not a
    container or a supported leaf, and for cycles.
    """
    leaves: list[tuple[KeyPath, Any]] = []
    treedef = _flatten(tree, (), leaves, set())
    return treedef, leaves


def _flatten(node: Any, path: KeyPath, leaves: list, active: set[int]) -> Any:
    if len(path) > MAX_TREE_DEPTH:
        raise UnsupportedTypeError(keystr(path[:8]) + "/...", _type_name(node),
                                   f"containers nested deeper than {MAX_TREE_DEPTH} levels")
    stored = _adapters.stored_form(node)  # keras/jax/flax/optax objects: see _adapters
    if stored is not None:
        node = stored
    if is_stateful(node) and not isinstance(node, (dict, list, tuple)):
        node = node.state_dict()
    tag = _CONTAINER_TYPES.get(type(node))
    if tag is None:
        if isinstance(node, (dict, list, tuple)):
            raise UnsupportedTypeError(
                keystr(path), _type_name(node), "only dict, OrderedDict, list and tuple "
                "containers are stored (subclasses such as namedtuple would come back "
                "as a different type)"
            )
        leaves.append((path, node))
        return len(leaves) - 1
    if id(node) in active:
        raise UnsupportedTypeError(keystr(path), _type_name(node), "the tree contains a cycle")
    active.add(id(node))
    try:
        if tag in ("dict", "odict"):
            keys = list(node.keys())
            for key in keys:
                if type(key) not in (str, int):
                    raise UnsupportedTypeError(
                        keystr((*path, key)), _type_name(key),
                        "dict keys must be str or int",
                    )
            children = [_flatten(node[k], (*path, k), leaves, active) for k in keys]
            return {"t": tag, "k": keys, "c": children}
        children = [_flatten(v, (*path, i), leaves, active) for i, v in enumerate(node)]
        return {"t": tag, "c": children}
    finally:
        active.discard(id(node))


def unflatten(treedef: Any, leaves: list[Any] | dict[int, Any]) -> Any:
    """Rebuild a tree from a treedef and its leaves (indexed by leaf number)."""
    if isinstance(treedef, int):
        return leaves[treedef]
    tag, children = treedef["t"], treedef["c"]
    if tag in ("dict", "odict"):
        pairs = [(k, unflatten(c, leaves)) for k, c in zip(treedef["k"], children)]
        return OrderedDict(pairs) if tag == "odict" else dict(pairs)
    items = [unflatten(c, leaves) for c in children]
    return tuple(items) if tag == "tuple" else items


def leaf_paths(treedef: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, int]]:
    """Yield ``(key path, leaf index)`` for every leaf of a treedef, in order."""
    if isinstance(treedef, int):
        yield path, treedef
        return
    keys = treedef.get("k") or range(len(treedef["c"]))
    for key, child in zip(keys, treedef["c"]):
        yield from leaf_paths(child, (*path, key))


def normalize_keys(keys: Any) -> list[KeyPath]:
    """Turn a ``keys=`` argument into a list of key paths.

    A str or int names a top-level key; a tuple is a path (``("opt", "state")``);
    a list holds several of either.
    """
    if keys is None:
        return []
    if isinstance(keys, (str, int, tuple)):
        keys = [keys]
    paths = []
    for entry in keys:
        if isinstance(entry, tuple):
            paths.append(entry)
        elif isinstance(entry, (str, int)):
            paths.append((entry,))
        else:
            raise TypeError(
                f"keys= takes str, int or tuple key paths, got {type(entry).__name__}"
            )
    return paths


def select(treedef: Any, keys: Any) -> tuple[Any, list[KeyPath]]:
    """The treedef pruned to the subtrees ``keys`` names, and the paths that match nothing.

    Containers on the way keep only the selected entries (a list keeps the selected
    items, in order); everything below a named path is kept whole.
    """
    found, missing = [], []
    for key_path in normalize_keys(keys):
        (found if _subtree(treedef, key_path) is not None else missing).append(key_path)
    return _prune(treedef, found), missing


def _prune(node: Any, paths: list[KeyPath]) -> Any:
    if any(not path for path in paths) or isinstance(node, int):
        return node
    keys = node.get("k")
    pruned: dict[str, Any] = {"t": node["t"], "c": []}
    if keys is not None:
        pruned["k"] = []
    for position, child in enumerate(node["c"]):
        key = keys[position] if keys is not None else position
        below = [p[1:] for p in paths if p[0] == key and type(p[0]) is type(key)]
        if below:
            pruned["c"].append(_prune(child, below))
            if keys is not None:
                pruned["k"].append(key)
    return pruned


def _subtree(treedef: Any, key_path: KeyPath) -> Any:
    node = treedef
    for key in key_path:
        if isinstance(node, int):
            return None
        if "k" in node:
            # keys are compared with their type: "0" and 0 are different keys
            match = [c for k, c in zip(node["k"], node["c"]) if k == key and type(k) is type(key)]
            if not match:
                return None
            node = match[0]
        elif type(key) is int and 0 <= key < len(node["c"]):
            node = node["c"][key]
        else:
            return None
    return node


# ---------------------------------------------------------------- leaves


def encode_leaf(value: Any, path: KeyPath) -> tuple[str, np.ndarray, dict]:
    """Encode one leaf as ``(kind, array, extra)``; the array is C-contiguous.

    Raises :class:`UnsupportedTypeError` naming the key path for anything that
    would not come back as the same type, bit for bit.
    """
    kind = type(value)
    if kind is np.ndarray or kind is np.memmap:
        return "ndarray", _checked_array(value, path), {}
    if isinstance(value, np.generic):
        return "npscalar", _checked_array(np.asarray(value), path), {}
    if kind is bool:
        return "bool", np.asarray(value, dtype=np.bool_), {}
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return "int", np.asarray(value, dtype="<i8"), {}
        return "bigint", np.frombuffer(str(value).encode("ascii"), dtype=np.uint8), {}
    if kind is float:
        return "float", np.asarray(value, dtype="<f8"), {}
    if kind is complex:
        return "complex", np.asarray(value, dtype="<c16"), {}
    if kind is str:
        # surrogatepass: a str holding lone surrogates still round-trips exactly
        data = value.encode("utf-8", "surrogatepass")
        return "str", np.frombuffer(data, dtype=np.uint8), {}
    if kind is bytes:
        return "bytes", np.frombuffer(value, dtype=np.uint8), {}
    if value is None:
        return "none", np.zeros(0, dtype=np.uint8), {}
    if _is_torch_tensor(value):
        from ckpt.integrations import torch as torch_adapter

        return torch_adapter.encode_tensor(value, keystr(path))
    encoded = _adapters.encode_leaf(value, keystr(path))
    if encoded is not None:
        return encoded
    raise UnsupportedTypeError(keystr(path), _type_name(value))


def decode_leaf(kind: str, array: np.ndarray, extra: dict, device: Any = None) -> Any:
    """Rebuild a leaf from the array and tags :func:`encode_leaf` produced.

    ``device`` places torch tensors (CPU when None); other leaves ignore it.
    """
    if kind == "ndarray":
        return array
    if kind == "npscalar":
        return array[()]
    if kind == "bool":
        return bool(array[()])
    if kind == "int":
        return int(array[()])
    if kind == "bigint":
        return int(array.tobytes().decode("ascii"))
    if kind == "float":
        return float(array[()])
    if kind == "complex":
        return complex(array[()])
    if kind == "str":
        return array.tobytes().decode("utf-8", "surrogatepass")
    if kind == "bytes":
        return array.tobytes()
    if kind == "none":
        return None
    if kind == "torch":
        from ckpt.integrations import torch as torch_adapter

        return torch_adapter.decode_tensor(array, extra, device)
    if kind in _adapters.ADAPTER_KINDS:
        return _adapters.adapter_for_kind(kind).decode_leaf(kind, array, extra, device)
    raise ValueError(f"unknown leaf kind {kind!r}")


LEAF_KINDS = frozenset(
    ["ndarray", "npscalar", "bool", "int", "bigint", "float", "complex", "str", "bytes",
     "none", "torch"]
) | _adapters.ADAPTER_KINDS


def _checked_array(array: np.ndarray, path: KeyPath) -> np.ndarray:
    dtype = array.dtype
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype:
        raise UnsupportedTypeError(
            keystr(path), f"numpy array of dtype {dtype}",
            "only bool, integer, float, complex, datetime, bytes and str dtypes are stored",
        )
    # non-contiguous views are stored as their values (one copy of this leaf only)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _is_torch_tensor(value: Any) -> bool:
    # a tensor exists only if torch was imported: never import it here
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _type_name(value: Any) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__name__
    return f"{kind.__module__}.{kind.__qualname__}"


def encode_tree(tree: Any) -> tuple[Any, list[tuple[KeyPath, str, np.ndarray, dict]]]:
    """Flatten ``tree`` and encode every leaf: ``(treedef, [(path, kind, array, extra)])``.

    Nothing is written before this succeeds, so a bad leaf never leaves a partial file.
    """
    treedef, leaves = flatten(tree)
    return treedef, [(path, *encode_leaf(value, path)) for path, value in leaves]


def decode_tree(treedef: Any, entries: list[dict], arrays: dict[int, np.ndarray],
                device: Any = None, source: str = "") -> Any:
    """Rebuild the tree from the arrays of the leaves it holds (a whole or pruned treedef).

    A leaf that cannot be rebuilt (damaged tags in a file from ``source``) raises
    :class:`CorruptCheckpointError` naming the file and the key.
    """
    values = {}
    for number, array in arrays.items():
        entry = entries[number]
        try:
            values[number] = decode_leaf(entry["kind"], array, entry.get("extra") or {}, device)
        except (ValueError, TypeError, RuntimeError, UnicodeDecodeError) as error:
            raise CorruptCheckpointError(source, f"cannot rebuild {entry['kind']} leaf "
                                         f"({error})", key=keystr(entry["path"])) from None
    return unflatten(treedef, values)
