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
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ckpt import _adapters
from ckpt._gcpause import gc_paused
from ckpt._types import KeyPath, is_stateful
from ckpt.errors import CorruptCheckpointError, UnsupportedTypeError

__all__ = [
    "flatten",
    "unflatten",
    "encode_leaf",
    "is_ml_dtype",
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
_CONTAINER_TYPES = {dict: "dict", OrderedDict: "odict", list: "list", tuple: "tuple",
                    Counter: "counter", defaultdict: "ddict", set: "set", frozenset: "fset"}
CONTAINER_TAGS = frozenset(_CONTAINER_TYPES.values())
MAPPING_TAGS = frozenset(["dict", "odict", "counter", "ddict"])
# A defaultdict's factory is code; only these builtin types are stored (by name).
DEFAULT_FACTORIES: dict[str, Any] = {
    "none": None, "list": list, "dict": dict, "set": set, "frozenset": frozenset,
    "tuple": tuple, "int": int, "float": float, "complex": complex, "str": str,
    "bytes": bytes, "bool": bool, "OrderedDict": OrderedDict, "Counter": Counter,
}
_FACTORY_NAMES = {id(v): k for k, v in DEFAULT_FACTORIES.items()}
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
    if type(node) in _PLAIN_LEAVES:
        # neither an adapter's nor stateful: skip those look-ups, which were a fifth of
        # saving 100,000 small arrays (issue 15)
        leaves.append((path, node))
        return len(leaves) - 1
    stored = _adapters.stored_form(node)  # keras/jax/flax/optax objects: see _adapters
    if stored is not None:
        node = stored
    if is_stateful(node) and not isinstance(node, _BUILTIN_CONTAINERS):
        node = state_dict_of(node)
    tag = _CONTAINER_TYPES.get(type(node))
    if tag is None:
        if isinstance(node, _BUILTIN_CONTAINERS) and not _is_torch_value(node):
            raise UnsupportedTypeError(
                keystr(path), _type_name(node), "only dict, OrderedDict, Counter, defaultdict, "
                "list, tuple, set and frozenset containers are stored (subclasses such as "
                "namedtuple would come back as a different type): convert it, e.g. with "
                "dict(value) or tuple(value)"
            )
        leaves.append((path, node))
        return len(leaves) - 1
    if id(node) in active:
        raise UnsupportedTypeError(keystr(path), _type_name(node), "the tree contains a cycle")
    active.add(id(node))
    try:
        if tag in MAPPING_TAGS:
            keys = list(node.keys())
            for key in keys:
                if type(key) not in (str, int):
                    raise UnsupportedTypeError(
                        keystr((*path, key)), _type_name(key),
                        "dict keys must be str or int",
                    )
            children = [_flatten(node[k], (*path, k), leaves, active) for k in keys]
            out = {"t": tag, "k": keys, "c": children}
            if tag == "ddict":
                out["f"] = _factory_name(node.default_factory, path)
            return out
        items = _set_items(node) if tag in ("set", "fset") else node
        children = [_flatten(v, (*path, i), leaves, active) for i, v in enumerate(items)]
        return {"t": tag, "c": children}
    finally:
        active.discard(id(node))


_BUILTIN_CONTAINERS = (dict, list, tuple, set, frozenset)
_PLAIN_LEAVES = frozenset([np.ndarray, int, float, bool, complex, str, bytes, type(None)])


def state_dict_of(value: Any) -> Any:
    """The state a stateful object is stored as (torch modules: canonical names)."""
    if _is_torch_module(value):
        from ckpt.integrations import torch as torch_adapter

        return torch_adapter.module_state_dict(value)
    return value.state_dict()


def _factory_name(factory: Any, path: KeyPath) -> str:
    name = _FACTORY_NAMES.get(id(factory))
    if name is None:
        raise UnsupportedTypeError(
            keystr(path), f"defaultdict with default_factory {factory!r}",
            "only builtin types (list, dict, int, ...) or None are stored as a factory, "
            "because a factory is code: store dict(value) and rebuild the defaultdict")
    return name


def _set_items(node: set | frozenset) -> list:
    # sorted when possible, so that equal sets give equal files
    try:
        return sorted(node)
    except TypeError:
        return list(node)


def unflatten(treedef: Any, leaves: list[Any] | dict[int, Any]) -> Any:
    """Rebuild a tree from a treedef and its leaves (indexed by leaf number)."""
    if isinstance(treedef, int):
        return leaves[treedef]
    tag, children = treedef["t"], treedef["c"]
    if tag in MAPPING_TAGS:
        pairs = [(k, unflatten(c, leaves)) for k, c in zip(treedef["k"], children)]
        if tag == "ddict":
            return defaultdict(DEFAULT_FACTORIES[treedef["f"]], pairs)
        if tag == "counter":
            return Counter(dict(pairs))  # Counter(pairs) would count the pairs
        return OrderedDict(pairs) if tag == "odict" else dict(pairs)
    items = [unflatten(c, leaves) for c in children]
    return _SEQUENCE_TYPES[tag](items)


_SEQUENCE_TYPES = {"list": list, "tuple": tuple, "set": set, "fset": frozenset}


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


def is_ml_dtype(dtype: np.dtype) -> bool:
    """A dtype numpy lacks, registered by ``ml_dtypes`` (bfloat16, float8, int4)."""
    return type(dtype).__module__.startswith("ml_dtypes")


def encode_leaf(value: Any, path: KeyPath) -> tuple[str, np.ndarray, dict]:
    """Encode one leaf as ``(kind, array, extra)``; the array is C-contiguous.

    Raises :class:`UnsupportedTypeError` naming the key path for anything that
    would not come back as the same type, bit for bit.
    """
    kind = type(value)
    if kind is np.ndarray or kind is np.memmap:
        if is_ml_dtype(value.dtype):
            from ckpt.integrations import jax as jax_adapter  # imports no jax

            return jax_adapter.encode_host_array(value)
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
    if _is_torch_value(value):
        from ckpt.integrations import torch as torch_adapter

        return torch_adapter.encode_value(value)
    encoded = _adapters.encode_leaf(value, keystr(path))
    if encoded is not None:
        return encoded
    raise UnsupportedTypeError(keystr(path), _type_name(value), _hint(value))


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
    if kind in TORCH_VALUE_KINDS:
        from ckpt.integrations import torch as torch_adapter

        return torch_adapter.decode_value(kind, array)
    if kind in _adapters.ADAPTER_KINDS:
        return _adapters.adapter_for_kind(kind).decode_leaf(kind, array, extra, device)
    raise ValueError(f"unknown leaf kind {kind!r}")


TORCH_VALUE_KINDS = frozenset(["torch_size", "torch_dtype", "torch_device"])
LEAF_KINDS = frozenset(
    ["ndarray", "npscalar", "bool", "int", "bigint", "float", "complex", "str", "bytes",
     "none", "torch", *TORCH_VALUE_KINDS]
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


def _is_torch_value(value: Any) -> bool:
    """torch.Size, torch.dtype and torch.device: values real state dicts hold."""
    torch = sys.modules.get("torch")
    return torch is not None and type(value) in (torch.Size, torch.dtype, torch.device)


def _is_torch_module(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def _hint(value: Any) -> str:
    """What to do with a value ckpt cannot store."""
    if callable(value):
        return ("functions and other code are never stored (loading a checkpoint must not "
                "run code): leave it out of the state and recreate it on restore")
    return ("store its data as arrays, scalars, str or containers of them, or give it "
            "state_dict()/load_state_dict() methods")


def _type_name(value: Any) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__name__
    return f"{kind.__module__}.{kind.__qualname__}"


def encode_tree(tree: Any) -> tuple[Any, list[tuple[KeyPath, str, np.ndarray, dict]]]:
    """Flatten ``tree`` and encode every leaf: ``(treedef, [(path, kind, array, extra)])``.

    Tensors that share memory with another leaf (tied weights, views of one buffer)
    are encoded as aliases of it (``extra["alias"]``): their bytes are stored once.
    Nothing is written before this succeeds, so a bad leaf never leaves a partial file.
    """
    with gc_paused():
        return _encode_tree(tree)


def _encode_tree(tree: Any) -> tuple[Any, list[tuple[KeyPath, str, np.ndarray, dict]]]:
    treedef, leaves = flatten(tree)
    aliases: dict[int, Any] = {}
    if "torch" in sys.modules:
        from ckpt.integrations import torch as torch_adapter

        aliases = torch_adapter.find_aliases(leaves)
    encoded = []
    for number, (path, value) in enumerate(leaves):
        if number in aliases:
            encoded.append((path, *torch_adapter.encode_alias(value, keystr(path),
                                                              aliases[number])))
        else:
            encoded.append((path, *encode_leaf(value, path)))
    return treedef, encoded


def decode_tree(treedef: Any, entries: list[dict], arrays: dict[int, np.ndarray],
                device: Any = None, source: str = "",
                substitutes: dict[int, Any] | None = None) -> Any:
    """Rebuild the tree from the arrays of the leaves it holds (a whole or pruned treedef).

    ``substitutes`` gives leaves already rebuilt (template objects their bytes were
    read into). An alias leaf of a tensor comes back sharing the base tensor's
    storage. A leaf that cannot be rebuilt (damaged tags in a file from ``source``)
    raises :class:`CorruptCheckpointError` naming the file and the key.
    """
    values = dict(substitutes or {})
    numbers = sorted(arrays, key=lambda n: "alias" in entries[n])  # bases first
    for number in numbers:
        if number in values:
            continue
        entry = entries[number]
        try:
            values[number] = _decode_entry(entry, arrays[number], values, device)
        except (ValueError, TypeError, RuntimeError, UnicodeDecodeError) as error:
            raise CorruptCheckpointError(source, f"cannot rebuild {entry['kind']} leaf "
                                         f"({error})", key=keystr(entry["path"])) from None
    return unflatten(treedef, values)


def _decode_entry(entry: dict, array: np.ndarray, values: dict[int, Any], device: Any) -> Any:
    extra = entry.get("extra") or {}
    alias = entry.get("alias")
    if alias is not None and _is_torch_tensor(values.get(alias["of"])):
        from ckpt.integrations import torch as torch_adapter

        return torch_adapter.decode_alias(values[alias["of"]], entry)
    return decode_leaf(entry["kind"], array, extra, device)
