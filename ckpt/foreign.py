"""HDF5 files other tools wrote, read by libhdf5 in a child process with limits.

``ckpt.load`` of a plain HDF5 file and ``ckpt show FILE.h5`` both come here (one
code path, :func:`run`); ckpt's own files never do (they carry a ckpt header and
are read with ``preadv``, without h5py, at raw-read speed).

Why a child process, not validation before h5py reads: a damaged or hostile file
drives libhdf5 through its B-trees, filter pipelines, heaps and object headers,
and libhdf5 trusts them. A chunk whose stored size is 0 makes the fletcher32
filter read before its buffer (SIGSEGV inside ``read_direct``); a global heap
object of size 0 loops for ever; other damage allocates without bound. Validating
first would mean re-implementing the parts of the HDF5 format libhdf5 reads (every
B-tree version, every filter, every heap and message type) and staying in step
with each libhdf5 release; it would still miss what we did not think of, and a
miss kills or hangs the caller's process. A child process contains all of it:
the walk runs with ``RLIMIT_AS`` and ``RLIMIT_CPU`` set and a wall-clock timeout,
and a crash, a hang or an allocation failure costs only the child; the caller
gets a :class:`CorruptCheckpointError` naming the file. The child starts a fresh
interpreter (about 0.3 s: numpy, h5py and ckpt imports) and never forks the
caller, whose threads may hold locks. It hands back one ckpt state file in a
private temporary directory, read here with ckpt's own checked reader: nothing is
pickled, and even a child subverted by a hostile file can only give back data,
which is checked like any file from disk. The cheap checks that give a precise
reason (external links and storage, cycles, decompression bombs, damaged global
heaps) still run first, in the child.

Limits: ``CKPT_FOREIGN_TIMEOUT`` (seconds, default 20) plus one second per 20 MiB
of file; address space 1 GiB plus twice what the datasets may decode to.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from ckpt import h5format
from ckpt import index as index_check
from ckpt._foreign_child import EXPANSION_FLOOR, EXPANSION_LIMIT
from ckpt.errors import CorruptCheckpointError
from ckpt.tree import normalize_keys

__all__ = ["load", "describe", "run", "timeout_for"]

TIMEOUT_ENV = "CKPT_FOREIGN_TIMEOUT"
DEFAULT_TIMEOUT = 20.0  # seconds, plus SECONDS_PER_BYTE for each byte of file
SECONDS_PER_BYTE = 1 / (20 * 1024**2)
BASE_MEMORY = 1024**3  # interpreter, numpy, h5py and libhdf5's own caches
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# sys.path[0] would be the working directory: a stray numpy.py there must not run
_CHILD = ("import sys; sys.path[0] = sys.argv.pop(1); "
          "from ckpt._foreign_child import main; sys.exit(main(sys.argv[1:]))")


def timeout_for(size: int) -> float:
    """Seconds the child may take for a file of ``size`` bytes."""
    try:
        base = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        base = DEFAULT_TIMEOUT
    return max(base, 0.1) + size * SECONDS_PER_BYTE


def load(path: str, keys: Any = None) -> Any:
    """The tree of the plain HDF5 file at ``path``: groups as dicts, datasets as arrays."""
    tree, metadata = run(path, "load", keys)
    structured = metadata.get("structured")
    if not isinstance(structured, list):
        raise _bad_answer(path, "no list of structured arrays")
    for entry in structured:
        tree = _rebuild_structured(path, tree, entry)
    return tree


def describe(path: str) -> tuple[list[dict], dict[str, Any]]:
    """``(rows, root attributes)`` of the plain HDF5 file at ``path``, reading no data.

    A row is ``{"key", "kind", "dtype", "shape", "nbytes"}`` for every dataset that
    :func:`load` would return (soft links included), and for each external link
    (kind ``"external link"``, never followed).
    """
    _, metadata = run(path, "describe")
    rows, attributes = metadata.get("rows"), metadata.get("attributes")
    if not isinstance(rows, list) or not all(_valid_row(r) for r in rows):
        raise _bad_answer(path, "invalid dataset rows")
    if not isinstance(attributes, dict):
        raise _bad_answer(path, "invalid attributes")
    return rows, attributes


def run(path: str, mode: str, keys: Any = None) -> tuple[Any, dict]:
    """Walk ``path`` in a child (``mode`` ``load`` or ``describe``): ``(tree, metadata)``.

    Raises :class:`CorruptCheckpointError` when the child refuses the file, crashes,
    runs out of memory or time; ``StateMismatchError`` for ``keys`` not in the file.
    """
    size = os.stat(path).st_size
    key_paths = None if keys is None else [list(p) for p in normalize_keys(keys)]
    timeout = timeout_for(size)
    memory = BASE_MEMORY + 2 * max(EXPANSION_FLOOR, EXPANSION_LIMIT * size)
    with _scratch_dir() as scratch:
        out = os.path.join(scratch, "result.h5")
        command = [sys.executable, "-c", _CHILD, _PACKAGE_ROOT, os.path.abspath(path), out,
                   mode, json.dumps(key_paths), str(memory), str(math.ceil(timeout))]
        try:
            child = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, timeout=timeout, env=_child_env(),
                                   cwd=scratch)
        except subprocess.TimeoutExpired:  # subprocess.run killed our child
            raise CorruptCheckpointError(path, f"libhdf5 did not finish reading it in "
                                         f"{timeout:.3g} s (damaged files can send it into "
                                         "an endless loop)") from None
        if child.returncode != 0 or not os.path.exists(out):
            raise CorruptCheckpointError(path, _failure(child.returncode, child.stderr))
        index = h5format.read_header_index(out)
        tree = h5format.read_tree(out, index, progress=False)
    metadata = index.get("metadata")
    if not isinstance(metadata, dict):
        raise _bad_answer(path, "no metadata")
    _raise_refusal(path, metadata)
    return tree, metadata


@contextlib.contextmanager
def _scratch_dir() -> Iterator[str]:
    """A private temporary directory (0700) for the child's answer, removed afterwards."""
    scratch = tempfile.mkdtemp(prefix="ckpt-foreign-")
    try:
        yield scratch
    finally:
        # the child writes only result.h5; remove by full path, then the directory
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(scratch, "result.h5"))
        try:
            os.rmdir(scratch)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # one thread each: BLAS pools reserve address space the memory limit counts
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               HDF5_USE_FILE_LOCKING="FALSE")
    return env


def _failure(code: int, stderr: bytes) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGXCPU:
            return f"libhdf5 ran out of CPU time reading it ({name})"
        if -code == signal.SIGKILL:
            return "the HDF5 reader was killed (SIGKILL: out of time or memory)"
        return f"libhdf5 crashed reading it ({name}): the file is damaged"
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    last = lines[-1].strip()[:300] if lines else f"exit status {code}"
    if "MemoryError" in last:
        return "reading it needs more memory than the reader may use (damaged sizes?)"
    return f"the HDF5 reader failed ({last})"


def _raise_refusal(path: str, metadata: dict) -> None:
    refused, missing = metadata.get("refused"), metadata.get("missing")
    if refused is not None:
        if not (isinstance(refused, dict) and isinstance(refused.get("reason"), str)
                and isinstance(refused.get("key"), (str, type(None)))):
            raise _bad_answer(path, "invalid refusal")
        raise CorruptCheckpointError(path, refused["reason"][:2000], key=refused["key"])
    if missing is not None:
        if not isinstance(missing, list) or not all(_key_path(p) for p in missing):
            raise _bad_answer(path, "invalid missing keys")
        h5format.raise_missing_keys(path, [tuple(p) for p in missing])


def _bad_answer(path: str, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(path, f"the HDF5 reader gave an invalid answer ({what})")


def _key_path(value: Any) -> bool:
    return isinstance(value, list) and all(type(k) in (str, int) for k in value)


def _valid_row(row: Any) -> bool:
    if not isinstance(row, dict):
        return False
    shape = row.get("shape")
    return (isinstance(row.get("key"), str) and row.get("kind") in ("dataset", "external link")
            and isinstance(row.get("dtype"), (str, type(None)))
            and (shape is None or (isinstance(shape, list)
                                   and all(type(d) is int and d >= 0 for d in shape)))
            and type(row.get("nbytes")) is int and row["nbytes"] >= 0)


# ----------------------------------------------------- structured arrays

MAX_DTYPE_DEPTH = 32


def _rebuild_structured(path: str, tree: Any, entry: Any) -> Any:
    """``tree`` with the raw bytes at ``entry``'s key path viewed as its structured dtype."""
    if not (isinstance(entry, list) and len(entry) == 3 and _key_path(entry[0])
            and isinstance(entry[2], list) and all(type(d) is int and d >= 0 for d in entry[2])):
        raise _bad_answer(path, "invalid structured array entry")
    key_path, spec, shape = entry
    key = "/".join(map(str, key_path))
    dtype = _dtype(spec, 0)
    if dtype is None:
        raise CorruptCheckpointError(path, f"unsupported compound type {str(spec)[:100]}",
                                     key=key)

    def view(raw: Any) -> Any:
        if (not isinstance(raw, np.ndarray) or raw.dtype != np.uint8
                or raw.size != math.prod(shape) * dtype.itemsize):
            raise _bad_answer(path, f"structured array {key} does not match its bytes")
        return raw.view(dtype).reshape(shape)

    return _replace(tree, key_path, view, path)


def _replace(tree: Any, key_path: list, change: Any, path: str) -> Any:
    if not key_path:
        return change(tree)
    head, rest = key_path[0], key_path[1:]
    try:
        if isinstance(tree, dict):
            out = dict(tree)
            out[head] = _replace(tree[head], rest, change, path)
            return out
        items = list(tree)
        items[head] = _replace(items[head], rest, change, path)
        return type(tree)(items)
    except (KeyError, IndexError, TypeError):
        raise _bad_answer(path, "structured array at a missing key") from None


def _dtype(spec: Any, depth: int) -> np.dtype | None:
    """The dtype a child's ``dtype_spec`` describes, or None when it is not a sane one."""
    if depth > MAX_DTYPE_DEPTH:
        return None
    try:
        if isinstance(spec, str):
            return index_check.plain_dtype(spec)
        if not isinstance(spec, dict):
            return None
        if "void" in spec:
            size = spec["void"]
            return np.dtype(f"V{size}") if type(size) is int and 0 < size < 2**31 else None
        if "base" in spec:
            base, shape = _dtype(spec["base"], depth + 1), spec["shape"]
            if base is None or not (isinstance(shape, list) and len(shape) <= 32 and all(
                    type(d) is int and 0 <= d < 2**31 for d in shape)):
                return None
            return np.dtype((base, tuple(shape)))
        names, formats = spec["names"], [_dtype(f, depth + 1) for f in spec["formats"]]
        offsets, itemsize = spec["offsets"], spec["itemsize"]
        if (any(f is None for f in formats) or not all(isinstance(n, str) for n in names)
                or not all(type(o) is int and o >= 0 for o in offsets)
                or type(itemsize) is not int or not 0 < itemsize < 2**31):
            return None
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": itemsize})
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
