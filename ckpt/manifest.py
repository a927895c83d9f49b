"""The manifest: a step's commit record, written last.

A step directory without a manifest that parses and names its own step is not a
checkpoint. The manifest holds the format version, step, time, metrics, user
metadata, the saving manager's retention policy, library versions and, per data
file, what authenticates it.

Format version 2 (written now) keeps the leaf index in one place: inside the data
file (``/.ckpt/index``, pointed at by the file's ckpt header). The manifest records
per data file its size in bytes and the xxh3 checksum of that index, so it still
authenticates everything (manifest -> index -> every leaf's checksum), every
reader (restore, ``ckpt verify``/``show``/``export``/``diff``) uses the same index
through :func:`open_data`, and a manifest stays small whatever the state holds:
listing a directory reads only manifests, never data files. Version 1 (read, no
longer written) repeated the full index in the manifest; for those the manifest's
copy is the one every reader uses.

A manifest is refused unread when larger than ``MAX_MANIFEST_BYTES`` (8 MiB; user
metadata is limited to ``MAX_METADATA_BYTES`` at save so that every manifest ckpt
writes fits). A version-1 manifest may add the size of its ``state.h5``: its index
grows with the number of leaves, and the same index is also stored in that file,
so a real one is never larger.
"""

from __future__ import annotations

import json
import math
import platform
from typing import Any

from ckpt import h5format, storage
from ckpt import index as index_check
from ckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsupportedTypeError,
)
from ckpt.policies import StepInfo

__all__ = ["MANIFEST_NAME", "DATA_NAME", "VERSION", "READABLE_VERSIONS", "MAX_MANIFEST_BYTES",
           "MAX_METADATA_BYTES", "build", "check_metadata", "encode", "read", "open_data",
           "step_info", "clean_metrics"]

MANIFEST_NAME = "manifest.json"
DATA_NAME = "state.h5"
VERSION = 2  # of the step format; the state file's own index format is index.VERSION
READABLE_VERSIONS = (1, 2)
MAX_MANIFEST_BYTES = 8 * 1024**2
MAX_METADATA_BYTES = 4 * 1024**2
# a manifest ckpt wrote starts like this (json.dumps keeps build()'s key order)
_V1_PREFIX = b'{"format":"ckpt","version":1,'
# datetime (and so every tool that shows a time) ends with the year 9999
MAX_TIME = 253402300799.0


# JSON has no NaN or infinity; these are the tokens Python's json would have written,
# as strings, so that float(value) still turns them back into numbers.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def clean_metrics(metrics: Any) -> dict[str, Any]:
    """Metrics as JSON values: numpy and torch scalars become Python numbers.

    A NaN or infinite float is stored as the string ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"`` (valid JSON; ``float()`` reads it back; ``KeepBest`` never ranks
    it). Refused with ``UnsupportedTypeError`` naming the metric: non-scalar values
    (arrays, lists), other types, and ints beyond float range, which no policy
    could rank.
    """
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise UnsupportedTypeError("metrics", type(metrics).__name__, "metrics must be a dict")
    return {_metric_name(name): _metric_value(name, value) for name, value in metrics.items()}


def _metric_name(name: Any) -> str:
    if not isinstance(name, str):
        raise UnsupportedTypeError(f"metrics/{name!r}", type(name).__name__,
                                   "metric names must be str")
    return name


def _metric_value(name: str, value: Any) -> Any:
    key, type_name = f"metrics/{name}", type(value).__name__
    if hasattr(value, "item") and callable(value.item):  # numpy or torch scalar
        shape = tuple(getattr(value, "shape", ()))
        if shape:
            raise UnsupportedTypeError(key, type_name, "a metric must be a scalar (0-d), got "
                                       f"shape {shape}")
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError) as error:
            raise UnsupportedTypeError(key, type_name, f"a metric must be a scalar ({error})"
                                       ) from None
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE[repr(value)]
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            raise UnsupportedTypeError(key, "int", "an int metric must fit in a float "
                                       "(|value| < 1.8e308) so that it can be ranked"
                                       ) from None
    if not isinstance(value, (int, float, str, bool)) and value is not None:
        raise UnsupportedTypeError(key, type(value).__name__,
                                   "a metric must be a number, str, bool or None")
    return value


def _versions() -> dict[str, str]:
    import h5py
    import numpy

    from ckpt._version import __version__

    return {"ckpt": __version__, "numpy": numpy.__version__, "h5py": h5py.__version__,
            "python": platform.python_version()}


def build(step: int, saved_at: float, metrics: dict, metadata: Any, index: dict,
          retention: list | None = None, extra_files: dict | None = None,
          world_size: int | None = None) -> dict:
    """The manifest of one step whose data file ``state.h5`` has ``index``.

    ``index`` is what :func:`h5format.write_state` returned (with ``file_nbytes``
    and ``index_checksum``); ``retention`` describes the saving manager's policy
    (``policies.to_spec``). A distributed save adds the rank files (``extra_files``,
    name -> size and index checksum, as ``state.h5``'s index records them too) and
    the ``world_size`` that wrote them.
    """
    data_file = {"nbytes": index["file_nbytes"], "index_checksum": index["index_checksum"]}
    record = {"format": index_check.FORMAT, "version": VERSION, "step": step,
              "time": saved_at, "metrics": metrics, "metadata": metadata,
              "retention": retention, "versions": _versions(),
              "files": {DATA_NAME: data_file, **(extra_files or {})}}
    if world_size is not None:
        record["distributed"] = {"world_size": world_size}
    return record


def check_metadata(metadata: Any, *, max_bytes: int | None = None) -> None:
    """Refuse user metadata that JSON cannot hold (or, with ``max_bytes``, that is
    larger than that as JSON), before any work is done."""
    try:
        text = json.dumps(metadata, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        where = _non_finite_path(metadata, "metadata")
        if where is not None:  # Python's json would write NaN/Infinity: not JSON
            raise UnsupportedTypeError(where, "float", "metadata must be valid JSON, which "
                                       "has no NaN or infinity (pass such values as metrics, "
                                       "which store them as strings)") from None
        raise UnsupportedTypeError("metadata", type(metadata).__name__,
                                   f"metadata must be JSON-serializable ({error})") from None
    if max_bytes is not None and len(text) > max_bytes:
        raise UnsupportedTypeError("metadata", type(metadata).__name__,
                                   f"metadata is {len(text)} bytes as JSON; a checkpoint "
                                   f"holds at most {max_bytes} (store large data in the state)")


def _non_finite_path(value: Any, path: str, depth: int = 0) -> str | None:
    """The key path of the first NaN or infinite float in JSON-like ``value``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if depth > 100:  # json.dumps refuses deeper nesting itself
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite_path(item, f"{path}/{key}", depth + 1)
        if found is not None:
            return found
    return None


def encode(manifest: dict) -> bytes:
    """Serialize a manifest (its metadata passed :func:`check_metadata` already)."""
    data = json.dumps(manifest, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_MANIFEST_BYTES:  # readers would refuse it: refuse it here
        raise UnsupportedTypeError("metrics", "dict", f"the manifest would be {len(data)} "
                                   f"bytes; at most {MAX_MANIFEST_BYTES} are read back")
    return data


def read(step_dir: str, step: int) -> dict:
    """Read and check the manifest of ``step_dir``; raises ``CorruptCheckpointError``.

    ``FileNotFoundError`` passes through when the whole directory is gone (pruned
    by a writer while we looked). Only the manifest is read (data files are at most
    stat'ed), and one larger than its limit is refused before it is read.
    """
    store = storage.store_for(step_dir)
    path = storage.join(step_dir, MANIFEST_NAME)
    try:
        reader = store.open(path)
    except FileNotFoundError:
        if not store.committed(step_dir):
            raise
        raise CorruptCheckpointError(path, "manifest is missing", step=step) from None
    except CorruptCheckpointError as error:
        raise CorruptCheckpointError(path, f"manifest: {error.reason}", step=step) from None
    with reader:
        try:
            size = reader.size
            head = reader.read(0, len(_V1_PREFIX))
            limit = MAX_MANIFEST_BYTES + (_data_size(step_dir) if head == _V1_PREFIX else 0)
            if size > limit:
                raise CorruptCheckpointError(path, f"manifest is {size} bytes, larger than a "
                                             f"manifest can be ({limit}); not read",
                                             step=step)
            # one byte past the size it had: a file growing under us is caught below,
            # and no buffer of the whole limit is allocated for a small manifest
            data = head + reader.read(len(head), min(size, limit) + 1 - len(head))
        except OSError as error:  # EIO from a bad sector, a failing object store
            raise CorruptCheckpointError(path, "cannot read the manifest "
                                         f"({error.strerror or error})", step=step) from None
    if len(data) > limit:
        raise CorruptCheckpointError(path, f"manifest is larger than {limit} bytes; not read",
                                     step=step)
    manifest = h5format.parse_json(data, path)
    problem = _problem(manifest, step)
    if problem:
        raise CorruptCheckpointError(path, problem, step=step)
    return manifest


def _data_size(step_dir: str) -> int:
    path = storage.join(step_dir, DATA_NAME)
    try:
        with storage.store_for(path).open(path) as reader:
            return reader.size
    except (OSError, CheckpointError):
        return 0


def _problem(manifest: Any, step: int) -> str | None:
    if not isinstance(manifest, dict) or manifest.get("format") != index_check.FORMAT:
        return "not a ckpt manifest"
    version = manifest.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        return (f"format version {str(version)[:30]} is not one this ckpt reads "
                f"({', '.join(map(str, READABLE_VERSIONS))})")
    if manifest.get("step") != step or type(manifest.get("step")) is not int:
        return f"manifest is for step {str(manifest.get('step'))[:30]}, not {step}"
    saved_at = manifest.get("time")
    if (type(saved_at) not in (int, float) or not math.isfinite(saved_at)
            or not 0 <= saved_at <= MAX_TIME):
        return f"manifest time {str(saved_at)[:30]} is not a time between 1970 and 9999"
    return (_metrics_problem(manifest.get("metrics"))
            or _retention_problem(manifest.get("retention"))
            or _files_problem(manifest, version))


def _metrics_problem(metrics: Any) -> str | None:
    if not isinstance(metrics, dict):
        return "manifest metrics are not a mapping"
    for name, value in metrics.items():
        if type(value) is int and abs(value) > 2**1023:  # beyond any float: cannot rank
            return f"metric {name[:50]!r} is an int too large for a float"
        if type(value) not in (int, float, str, bool) and value is not None:
            return (f"metric {name[:50]!r} is a {type(value).__name__}, not a number, str, "
                    "bool or null")
    return None


_POSITIVE_INT = ("n", "steps")


def _retention_problem(retention: Any) -> str | None:
    """The retention spec (``policies.to_spec``) is null or well formed.

    Policies ckpt does not know (a user's own subclass) pass as they are; only the
    fields of known ones are checked, so that ``from_spec`` can trust them.
    """
    if retention is None:
        return None
    if not isinstance(retention, list) or not all(
            isinstance(p, dict) and isinstance(p.get("policy"), str) for p in retention):
        return "manifest retention is not a list of policies"
    for part in retention:
        for name in _POSITIVE_INT:
            value = part.get(name)
            if name in part and not (type(value) is int and 1 <= value < 2**63):
                return f"retention {part['policy'][:30]}: {name}={str(value)[:30]} is not a " \
                       "positive int"
        seconds = part.get("seconds")
        if "seconds" in part and not (type(seconds) in (int, float) and math.isfinite(seconds)
                                      and seconds > 0):
            return f"retention {part['policy'][:30]}: seconds={str(seconds)[:30]} is not > 0"
        if "metric" in part and not isinstance(part["metric"], str):
            return f"retention {part['policy'][:30]}: metric is not a str"
        if "mode" in part and part["mode"] not in ("min", "max"):
            return f"retention {part['policy'][:30]}: mode is not min or max"
    return None


def _files_problem(manifest: dict, version: int) -> str | None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(files.get(DATA_NAME), dict):
        return f"manifest names no {DATA_NAME}"
    if version == 1:
        return None  # the index it holds is checked when the data file is opened
    for name, record in files.items():
        if name != DATA_NAME and not index_check.is_data_file_name(name):
            return f"manifest names a data file {str(name)[:60]!r} that no step holds"
        nbytes = record.get("nbytes") if isinstance(record, dict) else None
        expected = record.get("index_checksum") if isinstance(record, dict) else None
        if type(nbytes) is not int or nbytes < 0 or not isinstance(expected, str):
            return f"manifest entry of {str(name)[:60]} needs nbytes (an int) and " \
                   "index_checksum"
    distributed = manifest.get("distributed")
    if distributed is not None and not (isinstance(distributed, dict)
                                        and type(distributed.get("world_size")) is int):
        return "manifest distributed record needs a world_size"
    return None


def open_data(step_dir: str, step: int, manifest: dict) -> tuple[str, dict]:
    """``(data file path, index)`` of a step, the index checked against the file.

    The index is the one in the data file, authenticated by the manifest (version
    2), or the manifest's own copy (version 1). Raises ``CheckpointNotFoundError``
    when the step directory is gone (pruned while we looked) and
    ``CorruptCheckpointError`` when the data file is missing, cannot be opened, or
    does not match the manifest.
    """
    store = storage.store_for(step_dir)
    data_path = storage.join(step_dir, DATA_NAME)
    try:
        with store.open(data_path) as reader:
            size = reader.size
    except FileNotFoundError:
        if not store.committed(step_dir):
            raise CheckpointNotFoundError(step_dir, step) from None
        raise CorruptCheckpointError(data_path, "data file is missing", step=step) from None
    record = manifest["files"][DATA_NAME]
    if manifest["version"] == 1:
        index_check.validate_index(record, data_path, size)
        return data_path, record
    if size != record["nbytes"]:
        raise CorruptCheckpointError(data_path, f"data file is {size} bytes, the manifest "
                                     f"says {record['nbytes']} (truncated or replaced?)",
                                     step=step)
    index = h5format.read_header_index(data_path, expected_checksum=record["index_checksum"])
    index["file_nbytes"] = size
    return data_path, index


def step_info(manifest: dict, step_dir: str) -> StepInfo:
    """The :class:`StepInfo` a manifest describes (from the manifest alone)."""
    if manifest["version"] >= 2:  # every data file of the step (one per rank, distributed)
        nbytes = sum(r["nbytes"] for r in manifest["files"].values())
    else:
        nbytes = manifest["files"][DATA_NAME].get("file_nbytes", 0)
    return StepInfo(step=manifest["step"], time=float(manifest["time"]),
                    metrics=dict(manifest["metrics"]), path=step_dir,
                    nbytes=nbytes if type(nbytes) is int else 0,
                    metadata=manifest.get("metadata"))
