"""The manifest: a step's commit record, written last.

A step directory without a manifest that parses and names its own step is not a
checkpoint. The manifest holds the format version, step, time, metrics, user
metadata, library versions and, per data file, the full index (every leaf's key
path, kind, dtype, shape, size, offset and checksum).
"""

from __future__ import annotations

import json
import math
import os
import platform
import stat
from typing import Any

from ckpt import h5format
from ckpt import index as index_check
from ckpt.errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedTypeError
from ckpt.policies import StepInfo

__all__ = ["MANIFEST_NAME", "DATA_NAME", "build", "check_metadata", "encode", "read",
           "open_data", "step_info", "clean_metrics"]

MANIFEST_NAME = "manifest.json"
DATA_NAME = "state.h5"


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
          retention: list | None = None) -> dict:
    """The manifest of one step whose single data file has ``index``.

    ``retention`` describes the saving manager's policy (``policies.to_spec``).
    """
    file_index = {k: v for k, v in index.items() if k != "metadata"}
    return {"format": index_check.FORMAT, "version": index_check.VERSION, "step": step,
            "time": saved_at, "metrics": metrics, "metadata": metadata,
            "retention": retention, "versions": _versions(), "files": {DATA_NAME: file_index}}


def check_metadata(metadata: Any) -> None:
    """Refuse user metadata that JSON cannot hold, before any work is done."""
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise UnsupportedTypeError("metadata", type(metadata).__name__,
                                   f"metadata must be JSON-serializable ({error})") from None


def encode(manifest: dict) -> bytes:
    """Serialize a manifest (its metadata passed :func:`check_metadata` already)."""
    return json.dumps(manifest, separators=(",", ":")).encode()


def read(step_dir: str, step: int) -> dict:
    """Read and check the manifest of ``step_dir``; raises ``CorruptCheckpointError``.

    ``FileNotFoundError`` passes through when the whole directory is gone (pruned
    by a writer while we looked).
    """
    path = os.path.join(step_dir, MANIFEST_NAME)
    try:
        # O_NONBLOCK: a FIFO in its place must not block us (regular files ignore it)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if not os.path.isdir(step_dir):
            raise
        raise CorruptCheckpointError(path, "manifest is missing", step=step) from None
    except OSError as error:  # a symlink loop, no permission, ...
        raise CorruptCheckpointError(path, f"cannot open the manifest ({error.strerror})",
                                     step=step) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory, FIFO, device...
        os.close(fd)
        raise CorruptCheckpointError(path, "manifest is not a regular file", step=step)
    with open(fd, "rb") as handle:
        data = handle.read()
    manifest = h5format.parse_json(data, path)
    problem = _problem(manifest, step)
    if problem:
        raise CorruptCheckpointError(path, problem, step=step)
    return manifest


def _problem(manifest: Any, step: int) -> str | None:
    if not isinstance(manifest, dict) or manifest.get("format") != index_check.FORMAT:
        return "not a ckpt manifest"
    if manifest.get("version") != index_check.VERSION or type(manifest.get("version")) is not int:
        return f"format version {manifest.get('version')!r} is not {index_check.VERSION}"
    if manifest.get("step") != step or type(manifest.get("step")) is not int:
        return f"manifest is for step {manifest.get('step')!r}, not {step}"
    saved_at = manifest.get("time")
    if not isinstance(saved_at, (int, float)) or not math.isfinite(saved_at):
        return "manifest has no valid time"
    if not isinstance(manifest.get("metrics"), dict):
        return "manifest metrics are not a mapping"
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(files.get(DATA_NAME), dict):
        return f"manifest names no {DATA_NAME}"
    return None


def open_data(step_dir: str, step: int, manifest: dict) -> tuple[str, dict]:
    """``(data file path, index)`` of a step, the index checked against the file.

    Raises ``CheckpointNotFoundError`` when the step directory is gone (pruned while
    we looked) and ``CorruptCheckpointError`` when the data file is missing or
    cannot be opened.
    """
    data_path = os.path.join(step_dir, DATA_NAME)
    try:
        size = os.stat(data_path).st_size
    except FileNotFoundError:
        if not os.path.isdir(step_dir):
            raise CheckpointNotFoundError(step_dir, step) from None
        raise CorruptCheckpointError(data_path, "data file is missing", step=step) from None
    except OSError as error:  # a symlink loop, no permission
        raise CorruptCheckpointError(data_path, f"cannot open ({error.strerror})",
                                     step=step) from None
    index = manifest["files"][DATA_NAME]
    index_check.validate_index(index, data_path, size)
    return data_path, index


def step_info(manifest: dict, step_dir: str) -> StepInfo:
    """The :class:`StepInfo` a manifest describes."""
    index = manifest["files"][DATA_NAME]
    nbytes = index.get("file_nbytes", 0)
    return StepInfo(step=manifest["step"], time=float(manifest["time"]),
                    metrics=dict(manifest["metrics"]), path=step_dir,
                    nbytes=nbytes if isinstance(nbytes, int) else 0,
                    metadata=manifest.get("metadata"))
