"""Export one checkpoint step to ``.npz``, ``.safetensors`` or Keras' own formats.

``OUT.weights.h5`` and ``OUT.keras`` need a checkpoint that holds a Keras model's
config (see :mod:`ckpt.integrations._keras_export`); they are written by Keras.

Each leaf becomes one array named by its key path joined with ``/`` (int keys as
decimal, the root of a single-leaf state as ``<root>``). What becomes what:

* numpy arrays and scalars, torch tensors: the array itself;
* Python int, float, bool, complex: a 0-d array (int64, float64, bool, complex128);
* str and bytes: a 1-d uint8 array of the (UTF-8) bytes;
* None, ints beyond int64, torch dtypes numpy lacks (bfloat16), and for
  ``.safetensors`` the dtypes it cannot hold (complex, datetime, str arrays):
  skipped, each with a note.

``.npz`` is written like ``np.savez`` (uncompressed zip of ``.npy`` members) but
with ``allow_pickle=False``, and without ``np.savez``'s reserved keyword names.
Both formats are written to a temporary sibling and renamed into place. ``DIR`` may
be a URL (``s3://bucket/run``); ``OUT`` is a local file.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckpt import fsutil, storage
from ckpt.errors import CheckpointError
from ckpt.inspection import bits_only, checkpoint_dir, iter_arrays, leaf_dtype, open_step
from ckpt.tree import keystr, leaf_paths

__all__ = ["ExportResult", "FORMATS", "export_format", "export_step"]

FORMATS = {".npz": "npz", ".safetensors": "safetensors", ".weights.h5": "weights.h5",
           ".keras": "keras"}
_SAFETENSORS_DTYPES = frozenset(
    np.dtype(name) for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                "uint32", "uint64", "float16", "float32", "float64"))


@dataclass(frozen=True)
class ExportResult:
    """What was written: the file, its format, the arrays and the leaves left out."""

    out: str
    format: str
    arrays: int
    nbytes: int
    notes: list[str]


def export_format(out: str | os.PathLike[str]) -> str:
    """``"npz"`` or ``"safetensors"`` from ``out``'s extension; ``CheckpointError`` otherwise."""
    name = Path(out).name.lower()
    suffix = ".weights.h5" if name.endswith(".weights.h5") else Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise CheckpointError(f"unknown export format {suffix or '(no extension)'!r} for "
                              f"{out} (use {' or '.join(FORMATS)})")
    return FORMATS[suffix]


def export_step(directory: str | os.PathLike[str], step: int,
                out: str | os.PathLike[str]) -> ExportResult:
    """Write the leaves of ``step`` to ``out`` (``.npz`` or ``.safetensors``)."""
    fmt = export_format(out)
    if storage.is_url(os.fspath(out)):
        raise CheckpointError(f"cannot write {out}: export writes a local file (copy it to "
                              "the object store afterwards)")
    out = Path(out)
    if not out.parent.is_dir():
        raise CheckpointError(f"cannot write {out}: directory {out.parent} does not exist")
    if fmt in ("weights.h5", "keras"):
        from ckpt.integrations._keras_export import export_keras

        arrays, nbytes = export_keras(checkpoint_dir(directory), step, out, fmt)
        return ExportResult(str(out), fmt, arrays, nbytes, [])
    save_file = _safetensors_saver() if fmt == "safetensors" else None
    data_path, index, record = open_step(checkpoint_dir(directory), step)
    names, notes = _plan(index, fmt)
    arrays = _arrays(data_path, index, names)
    tmp = out.with_name(fsutil.tmp_name(out.name))
    try:
        if save_file is not None:
            save_file(dict(arrays), str(tmp), metadata=_safetensors_metadata(record))
        else:
            _write_npz(tmp, arrays)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    nbytes = sum(entry["nbytes"] for number, entry in enumerate(index["leaves"])
                 if number in names)
    return ExportResult(str(out), fmt, len(names), nbytes, notes)


def _safetensors_saver() -> Any:
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise CheckpointError("exporting to .safetensors needs the safetensors package "
                              "(pip install safetensors)") from None
    return save_file


def _plan(index: dict, fmt: str) -> tuple[dict[int, str], list[str]]:
    """``{leaf number: array name}`` of what is exported, and a note per leaf left out."""
    names: dict[int, str] = {}
    owners: dict[str, str] = {}
    notes = []
    for path, number in leaf_paths(index["tree"]):
        entry = index["leaves"][number]
        reason = _skip_reason(entry, fmt)
        if reason:
            notes.append(f"skipped {keystr(path)}: {reason}")
            continue
        name = "/".join(str(key) for key in path) if path else "<root>"
        if name in owners:
            raise CheckpointError(f"cannot export: keys {owners[name]} and {keystr(path)} "
                                  f"would both be named {name!r}")
        owners[name] = keystr(path)
        names[number] = name
    return names, notes


def _skip_reason(entry: dict, fmt: str) -> str | None:
    kind, dtype = entry["kind"], np.dtype(entry["dtype"])
    if kind == "none":
        return "None has no array form"
    if kind == "bigint":
        return "int does not fit in int64"
    if kind in ("torch", "jax") and bits_only(entry):
        return f"numpy has no {leaf_dtype(entry)}"
    if fmt == "safetensors" and dtype.newbyteorder("=") not in _SAFETENSORS_DTYPES:
        return f"safetensors cannot hold dtype {dtype.name}"
    return None


def _arrays(data_path: str, index: dict,
            names: dict[int, str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, contiguous little-endian array)`` of each exported leaf, checksums verified."""
    for number, array in iter_arrays(data_path, index, sorted(names)):
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        yield names[number], np.asarray(array, order="C")  # keeps 0-d arrays 0-d


def _write_npz(path: Path, arrays: Iterator[tuple[str, np.ndarray]]) -> None:
    """What ``np.savez`` writes, one member at a time, never pickling."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _safetensors_metadata(record: dict) -> dict[str, str]:
    """The step and metrics, as safetensors' string-only header metadata."""
    return {"ckpt.step": str(record["step"]),
            "ckpt.metrics": json.dumps(record.get("metrics") or {})}
