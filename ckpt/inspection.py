"""Read-only views of a checkpoint directory, and pruning: what the ``ckpt`` command shows.

Every function returns data (small frozen dataclasses) and never prints; the CLI
formats it. Arrays are read leaf by leaf (small leaves pack by pack), so verifying,
diffing or exporting a large checkpoint holds at most one large leaf at a time
(two for a diff, all of them for a ``.safetensors`` export).

A directory may be a local path or a URL (``s3://bucket/run``): everything goes
through the :mod:`ckpt.storage` backend that serves it, so on an object store a
step is what has a manifest (an upload in progress is not listed, as for a manager).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckpt import foreign, fsutil, h5format, incremental, keras_archive, manifest, storage
from ckpt._progress import progress_bar
from ckpt.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ckpt.index import LINKED_FILE
from ckpt.manager import CheckpointManager
from ckpt.policies import (
    AnyOf,
    KeepAll,
    KeepBest,
    KeepEvery,
    KeepLast,
    Policy,
    StepInfo,
    from_spec,
    retained_steps,
)
from ckpt.tree import keystr, leaf_paths

__all__ = [
    "StepRow",
    "LeafRow",
    "SharedFile",
    "Description",
    "VerifyResult",
    "LeafDiff",
    "PruneResult",
    "checkpoint_dir",
    "resolve",
    "latest_step",
    "build_policy",
    "list_steps",
    "describe",
    "verify",
    "verify_step",
    "diff_steps",
    "prune",
    "open_step",
    "iter_arrays",
    "leaf_dtype",
    "bits_only",
]

# kinds whose dtype and shape are the user's (the others are Python scalars, str, bytes)
_ARRAY_KINDS = ("ndarray", "npscalar", "torch", "jax")
# kinds whose own dtype name (bfloat16, ...) is in extra["dtype"] when numpy lacks it
_FRAMEWORK_KINDS = ("torch", "jax")


@dataclass(frozen=True)
class StepRow:
    """One ``step_<N>`` directory; ``error`` is set when it has no valid manifest."""

    step: int
    path: str
    nbytes: int = 0
    time: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    kept_by: tuple[str, ...] | None = None
    error: str | None = None


@dataclass(frozen=True)
class LeafRow:
    """One leaf of a tree (or one dataset of a plain HDF5 file)."""

    key: str
    path: tuple[str | int, ...]
    kind: str
    dtype: str | None
    shape: tuple[int, ...] | None
    nbytes: int
    shared_from: int | None = None  # the earlier step whose file holds its bytes


@dataclass(frozen=True)
class SharedFile:
    """Bytes an incremental step shares with an earlier step: one hard-linked file."""

    step: int     # the step that wrote the file
    file: str     # its name in this step's directory (data.step<N>.h5)
    leaves: int   # how many leaves of this step it holds
    nbytes: int   # their bytes


@dataclass(frozen=True)
class Description:
    """What ``ckpt show`` shows: where it came from, its leaves and its metadata."""

    source: str
    format: str  # "ckpt-step", "ckpt-file", "hdf5" or "keras" (a .keras archive)
    leaves: list[LeafRow]
    nbytes: int
    step: int | None = None
    time: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: Any = None
    shared: tuple[SharedFile, ...] = ()  # an incremental step's linked files
    written_nbytes: int | None = None    # a step's own state.h5 (what its save wrote)


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking one step; ``error`` names the file and key that failed."""

    step: int
    path: str
    error: str | None = None
    leaves: int = 0
    nbytes: int = 0

    @property
    def ok(self) -> bool:
        """True when every checksum matched."""
        return self.error is None


@dataclass(frozen=True)
class LeafDiff:
    """One leaf compared between two steps: ``same``, ``changed``, ``only_a`` or ``only_b``."""

    key: str
    path: tuple[str | int, ...]
    status: str
    detail: str | None = None
    max_abs_diff: float | None = None


@dataclass(frozen=True)
class PruneResult:
    """Steps deleted (or, with ``dry_run``, that would be) and steps kept."""

    deleted: list[StepRow]
    kept: list[int]
    dry_run: bool


# ------------------------------------------------------------ directories


def checkpoint_dir(directory: str | os.PathLike[str]) -> Path | str:
    """``directory`` (a Path, or the URL as given), checked to be a checkpoint directory.

    A checkpoint directory holds ``step_<N>`` directories or the writer lock file
    (the lease object on an object store). Raises ``CheckpointNotFoundError`` when
    it does not exist, ``CheckpointError`` when it is something else.
    """
    location = _location(directory)
    store = storage.store_for(location)
    if not store.exists(location):
        raise CheckpointNotFoundError(location, detail="no such directory")
    if not store.isdir(location):
        raise CheckpointError(f"{location} is not a directory")
    # the lock file first: listing 10,000 steps to find one costs more
    if (not store.exists(storage.join(location, store.lock_name))
            and not store.step_dirs(location)):
        raise CheckpointError(f"{location} is not a checkpoint directory "
                              f"(no step_<N> directories and no {store.lock_name})")
    return location if storage.is_url(location) else Path(location)


def _location(directory: str | os.PathLike[str]) -> str:
    location = os.fspath(directory)
    return location.rstrip("/") if storage.is_url(location) else location


def _is_step(location: str) -> bool:
    """A step directory (local) or a committed step (an object store's manifest)."""
    store = storage.store_for(location)
    return store.isdir(location) and store.committed(location)


def _step_dir(directory: str | os.PathLike[str], step: int) -> str:
    location = storage.join(_location(directory), fsutil.step_dir_name(step))
    if not _is_step(location):
        raise CheckpointNotFoundError(location, step)
    return location


def _step_dirs(directory: str | os.PathLike[str]) -> dict[int, str]:
    location = _location(directory)
    return storage.store_for(location).step_dirs(location)


def _infos(directory: str | os.PathLike[str]
           ) -> tuple[list[StepInfo], dict[int, tuple[str, str]]]:
    """Valid checkpoints, and ``{step: (path, reason)}`` for step directories that are not.

    What a manager lists (the listing cache where it holds, the rescan rule of
    ``CheckpointManager.infos``: ``ckpt ls`` next to a ``KeepLast(1)`` writer never
    shows an empty directory); only damaged steps' manifests are read again, for
    the reason.
    """
    infos, damaged_dirs = CheckpointManager(directory)._infos_and_damaged()
    damaged = {}
    for step, path in damaged_dirs.items():
        try:
            manifest.read(path, step)
        except CorruptCheckpointError as error:
            damaged[step] = (path, error.reason)
        except FileNotFoundError:
            pass  # deleted by a writer since it was listed
    return infos, damaged


def latest_step(directory: str | os.PathLike[str]) -> int:
    """The newest step with a valid manifest; ``CheckpointNotFoundError`` when none."""
    infos, _ = _infos(directory)
    if not infos:
        raise CheckpointNotFoundError(str(directory), detail="no checkpoints in this directory")
    return infos[-1].step


def _disk_size(path: str) -> int:
    return storage.store_for(path).tree_size(path)


def _step_size(info: StepInfo) -> int:
    """Bytes of a valid step: the data files its manifest lists (their sizes are
    checked against it when read) and the manifest itself. One stat, where walking
    the directory cost 30 us a step, a third of ``ckpt ls`` for 10,000 (issue 15)."""
    location = storage.join(info.path, manifest.MANIFEST_NAME)
    return info.nbytes + storage.store_for(location).file_size(location)


# ---------------------------------------------------------------- policies


def build_policy(*, keep_last: int | None = None, keep_every: int | None = None,
                 keep_best: str | None = None, mode: str = "auto") -> Policy | None:
    """The union of the policies asked for, or None when none is."""
    parts: list[Policy] = []
    if keep_last is not None:
        parts.append(KeepLast(keep_last))
    if keep_every is not None:
        parts.append(KeepEvery(keep_every))
    if keep_best is not None:
        parts.append(KeepBest(keep_best, mode=mode))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AnyOf(*parts)


def _parts(policy: Policy) -> tuple[Policy, ...]:
    return policy.policies if isinstance(policy, AnyOf) else (policy,)


def _label(policy: Policy) -> str:
    labels = {KeepLast: "last", KeepEvery: "every", KeepBest: "best", KeepAll: "all"}
    return labels.get(type(policy), type(policy).__name__)


def kept_by(policy: Policy, infos: list[StepInfo]) -> dict[int, tuple[str, ...]]:
    """For each step, the labels of the policies that keep it (``()``: it would be pruned).

    The newest step, which pruning never deletes, is labelled ``newest`` when no
    policy keeps it.
    """
    keeps = [(_label(part), part.keep(infos)) for part in _parts(policy)]
    out = {info.step: tuple(label for label, kept in keeps if info.step in kept)
           for info in infos}
    if infos and not out[infos[-1].step]:
        out[infos[-1].step] = ("newest",)
    return out


def _check_metrics(policy: Policy, infos: list[StepInfo]) -> None:
    for part in _parts(policy):
        if isinstance(part, KeepBest) and infos and not part.ranked(infos):
            raise CheckpointError(f"no checkpoint has a numeric metric {part.metric!r}; "
                                  "refusing to prune by it")


# ------------------------------------------------------------------- ls


def stored_policy(step_dir: str, step: int) -> Policy | None:
    """The retention policy of the manager that saved ``step`` (from its manifest)."""
    try:
        return from_spec(manifest.read(step_dir, step).get("retention"))
    except (CheckpointError, OSError):
        return None


def list_steps(directory: str | os.PathLike[str], policy: Policy | None = None) -> list[StepRow]:
    """One row per step directory, damaged ones included, sorted by step.

    Each valid row says which part of ``policy`` would keep it; without a policy,
    the one the newest checkpoint was saved under (recorded in its manifest).
    """
    directory = checkpoint_dir(directory)
    infos, damaged = _infos(directory)
    if policy is None and infos:
        policy = stored_policy(infos[-1].path, infos[-1].step)
    keepers = kept_by(policy, infos) if policy is not None else {}
    rows = [StepRow(step=i.step, path=i.path, nbytes=_step_size(i), time=i.time,
                    metrics=i.metrics, kept_by=keepers.get(i.step)) for i in infos]
    rows += [StepRow(step=s, path=path, nbytes=_disk_size(path), error=reason)
             for s, (path, reason) in damaged.items()]
    return sorted(rows, key=lambda row: row.step)


# ----------------------------------------------------------------- show


def resolve(path: str | os.PathLike[str],
            step: int | None = None) -> tuple[Path | str, int | None]:
    """``(checkpoint directory, step)``, also when ``path`` is a ``step_<N>`` directory."""
    location = _location(path)
    store = storage.store_for(location)
    number = fsutil.parse_step_dir(storage.basename(location))
    if (step is None and number is not None and _is_step(location)
            and not store.step_dirs(location)
            and not store.exists(storage.join(location, store.lock_name))):
        return checkpoint_dir(storage.parent(location)), number
    return checkpoint_dir(location), step


def describe(path: str | os.PathLike[str], step: int | None = None) -> Description:
    """Describe a checkpoint directory's step (latest when None) or an HDF5 file."""
    location = _location(path)
    store = storage.store_for(location)
    if store.isdir(location):
        return describe_step(*resolve(location, step))
    if not store.exists(location):
        raise CheckpointNotFoundError(location)
    if step is not None:
        raise CheckpointError(f"{location} is a file: a step only applies to a checkpoint "
                              "directory")
    return describe_file(location)


def describe_step(directory: str | os.PathLike[str], step: int | None = None) -> Description:
    """The tree, metrics and metadata of one step (its index, not its data, is read)."""
    directory = checkpoint_dir(directory)
    step = latest_step(directory) if step is None else step
    step_dir = _step_dir(directory, step)
    record = _read_manifest(step_dir, step)
    try:
        _, index = manifest.open_data(step_dir, step, record)
    except CorruptCheckpointError as error:
        raise error.for_step(step) from None
    leaves = _leaf_rows(index)
    return Description(source=step_dir, format="ckpt-step", leaves=leaves,
                       nbytes=_disk_size(step_dir), step=step, time=float(record["time"]),
                       metrics=dict(record["metrics"]), metadata=record.get("metadata"),
                       shared=_shared_files(leaves),
                       written_nbytes=record["files"][manifest.DATA_NAME].get("nbytes"))


def _shared_files(leaves: list[LeafRow]) -> tuple[SharedFile, ...]:
    """Per earlier step, the leaves of an incremental step whose bytes it holds."""
    by_step: dict[int, list[LeafRow]] = {}
    for leaf in leaves:
        if leaf.shared_from is not None:
            by_step.setdefault(leaf.shared_from, []).append(leaf)
    return tuple(SharedFile(step=step, file=incremental.linked_name(step), leaves=len(rows),
                            nbytes=sum(row.nbytes for row in rows))
                 for step, rows in sorted(by_step.items()))


def describe_file(path: str | os.PathLike[str]) -> Description:
    """The leaves of a ``ckpt.save`` file, or the datasets of any other HDF5 file.

    Other HDF5 files are walked in a child process (:mod:`ckpt.foreign`), the same
    walk ``ckpt.load`` does, so ``show`` lists what ``load`` returns.
    """
    path = os.fspath(path)
    if h5format.is_ckpt_file(path):
        index = h5format.read_header_index(path)
        with h5format.open_reader(path) as reader:
            size = reader.size
        return Description(source=path, format="ckpt-file", leaves=_leaf_rows(index),
                           nbytes=size, metadata=index.get("metadata"))
    if storage.is_url(path):
        raise CheckpointError(f"{path} is not a file ckpt.save wrote; plain HDF5 and .keras "
                              "files are read from local paths only (copy it to local disk)")
    if keras_archive.is_keras_archive(path):
        return _describe_keras_archive(path, os.stat(path).st_size)
    leaves, attributes = _foreign_rows(path)
    return Description(source=path, format="hdf5", leaves=leaves,
                       nbytes=os.stat(path).st_size, metadata=attributes or None)


def _foreign_rows(path: str, prefix: tuple = ()) -> tuple[list[LeafRow], dict[str, Any]]:
    """The datasets of a plain HDF5 file (described in a child process) and its attributes."""
    rows, attributes = foreign.describe(path)
    leaves = [LeafRow(key="/".join([*prefix, row["key"]]),
                      path=(*prefix, *row["key"].split("/")), kind=row["kind"],
                      dtype=row["dtype"], nbytes=row["nbytes"],
                      shape=None if row["shape"] is None else tuple(row["shape"]))
              for row in rows]
    return leaves, attributes


def _describe_keras_archive(path: str, size: int) -> Description:
    """The datasets of a ``.keras`` archive's weights file, under ``weights/``."""
    members = keras_archive.read_json_members(path)
    rows: list[LeafRow] = []
    with keras_archive.weights_file(path) as weights:
        if weights is not None:
            rows, _ = _foreign_rows(weights, ("weights",))
    config = members.get("config") or {}
    metadata = {"class_name": config.get("class_name") if isinstance(config, dict) else None,
                **(members.get("metadata") or {})}
    return Description(source=path, format="keras", leaves=rows, nbytes=size,
                       metadata=metadata)


def _leaf_rows(index: dict) -> list[LeafRow]:
    entries = index["leaves"]
    return [_leaf_row(tuple(path), entries[number])
            for path, number in leaf_paths(index["tree"])]


def _leaf_row(path: tuple[str | int, ...], entry: dict) -> LeafRow:
    shape = tuple(entry["shape"]) if entry["kind"] in _ARRAY_KINDS else None
    linked = LINKED_FILE.fullmatch(entry.get("external", {}).get("file", ""))
    return LeafRow(key=keystr(path), path=path, kind=entry["kind"], dtype=leaf_dtype(entry),
                   shape=shape, nbytes=int(entry["nbytes"]),
                   shared_from=int(linked.group(1)) if linked else None)


def leaf_dtype(entry: dict) -> str | None:
    """The dtype a user sees (a torch leaf's own dtype name); None for non-array leaves."""
    if entry["kind"] not in _ARRAY_KINDS:
        return None
    own_dtype = (entry.get("extra") or {}).get("dtype")
    if entry["kind"] in _FRAMEWORK_KINDS and isinstance(own_dtype, str):
        return own_dtype.removeprefix("torch.")
    return np.dtype(entry["dtype"]).name


def bits_only(entry: dict) -> bool:
    """True for a torch/jax leaf stored as the bits of a dtype numpy lacks (bfloat16)."""
    if entry["kind"] not in _FRAMEWORK_KINDS:
        return False
    try:
        return np.dtype(leaf_dtype(entry)) != np.dtype(entry["dtype"]).newbyteorder("=")
    except TypeError:
        return True


# ------------------------------------------------------------- reading


def open_step(directory: str | os.PathLike[str], step: int) -> tuple[str, dict, dict]:
    """``(data path, index, manifest)`` of a step, the index checked against the file."""
    step_dir = _step_dir(directory, step)
    record = _read_manifest(step_dir, step)
    try:
        data_path, index = manifest.open_data(step_dir, step, record)
    except CorruptCheckpointError as error:
        raise error.for_step(step) from None
    return data_path, index, record


def _read_groups(index: dict, numbers: Any = None) -> list[tuple[set[int], int]]:
    """Leaf numbers in reading order, grouped so that one group is one read.

    Packed small leaves go together (one read per pack), each large leaf alone.
    Each group comes with the number of bytes reading it costs.
    """
    entries = index["leaves"]
    numbers = range(len(entries)) if numbers is None else numbers
    packs: dict[int, set[int]] = {}
    big: dict[int, set[int]] = {}
    for number in numbers:
        entry = entries[number]
        # an alias (tied tensor) has no bytes of its own: it is read with its base
        stored = entries[entry["alias"]["of"]] if "alias" in entry else entry
        base = entry["alias"]["of"] if "alias" in entry else number
        if "pack" in stored:
            packs.setdefault(stored["pack"], set()).add(number)
        else:
            big.setdefault(base, set()).add(number)
    packed = [(members, int(index["packs"][p]["nbytes"])) for p, members in sorted(packs.items())]
    return packed + [(members, int(entries[base]["nbytes"])) for base, members in big.items()]


def iter_arrays(data_path: str, index: dict, numbers: Any = None,
                 bar: Any = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(leaf number, encoded array)``, checksums verified, one group in memory at a time."""
    for group, cost in _read_groups(index, numbers):
        arrays = h5format.read_leaves(data_path, index, group, verify=True, progress=False)
        if bar is not None:
            bar.update(cost)
        yield from sorted(arrays.items())


def _read_manifest(step_dir: str, step: int) -> dict:
    try:
        return manifest.read(step_dir, step)
    except CorruptCheckpointError as error:
        raise error.for_step(step) from None


# --------------------------------------------------------------- verify


def verify(directory: str | os.PathLike[str], step: int | None = None, *,
           progress: bool | None = None) -> Iterator[VerifyResult]:
    """Check every checksum of ``step``, or of every step directory (damaged ones fail).

    ``directory`` may also be one ``step_<N>`` directory.
    """
    directory, step = resolve(directory, step)
    if step is not None:
        yield verify_step(directory, step, progress=progress)
        return
    for candidate in _step_dirs(directory):
        try:
            yield verify_step(directory, candidate, progress=progress)
        except CheckpointNotFoundError:
            pass  # deleted by a writer while we verified the others


def verify_step(directory: str | os.PathLike[str], step: int, *,
                progress: bool | None = None) -> VerifyResult:
    """Read every leaf of ``step`` and check its checksum (and the index's).

    Raises ``CheckpointNotFoundError`` when there is no such step; any damage is
    reported in the result.
    """
    step_dir = _step_dir(directory, step)
    try:
        leaves, nbytes = _verify(directory, step, progress)
    except CorruptCheckpointError as error:
        if not _is_step(step_dir):  # pruned while we read it (an object store's reads fail)
            raise CheckpointNotFoundError(step_dir, step) from None
        return VerifyResult(step, step_dir, error=str(error.for_step(step)))
    except FileNotFoundError:
        if not _is_step(step_dir):
            raise CheckpointNotFoundError(step_dir, step) from None
        raise
    return VerifyResult(step, step_dir, leaves=leaves, nbytes=nbytes)


def _verify(directory: str | os.PathLike[str], step: int,
            progress: bool | None) -> tuple[int, int]:
    data_path, index, _ = open_step(directory, step)  # the index restore uses, checked
    total = sum(cost for _, cost in _read_groups(index))
    with progress_bar(total, f"verifying step {step}", progress) as bar:
        for _ in iter_arrays(data_path, index, bar=bar):
            pass
    return len(index["leaves"]), total


# ----------------------------------------------------------------- diff


def diff_steps(directory: str | os.PathLike[str], step_a: int, step_b: int) -> list[LeafDiff]:
    """Compare two steps leaf by leaf (by key path); checksums are verified while reading.

    Leaves of ``step_a`` come first in its order, then those only in ``step_b``.
    """
    directory = checkpoint_dir(directory)
    side_a, side_b = _Side(directory, step_a), _Side(directory, step_b)
    out = []
    for path, number in side_a.numbers.items():
        if path not in side_b.numbers:
            out.append(LeafDiff(keystr(path), path, "only_a"))
        else:
            out.append(_compare(path, side_a, number, side_b, side_b.numbers[path]))
    out += [LeafDiff(keystr(path), path, "only_b")
            for path in side_b.numbers if path not in side_a.numbers]
    return out


class _Side:
    """One step of a diff: its index, and its packed leaves read up front."""

    def __init__(self, directory: Path | str, step: int) -> None:
        self.data_path, self.index, _ = open_step(directory, step)
        self.entries = self.index["leaves"]
        self.numbers = {tuple(path): number for path, number in leaf_paths(self.index["tree"])}
        packed = [n for n, entry in enumerate(self.entries) if "pack" in entry]
        self.packed = dict(iter_arrays(self.data_path, self.index, packed))

    def array(self, number: int) -> np.ndarray:
        """The encoded array of leaf ``number``."""
        if number in self.packed:
            return self.packed[number]
        return dict(iter_arrays(self.data_path, self.index, [number]))[number]


def _compare(path: tuple, side_a: _Side, number_a: int, side_b: _Side,
             number_b: int) -> LeafDiff:
    entry_a, entry_b = side_a.entries[number_a], side_b.entries[number_b]
    key = keystr(path)
    described = _describe_change(entry_a, entry_b)
    if described:
        return LeafDiff(key, path, "changed", described)
    if "checksum" in entry_a and entry_a.get("checksum") == entry_b.get("checksum"):
        return LeafDiff(key, path, "same")  # both large and stored alike: no need to read
    a, b = side_a.array(number_a), side_b.array(number_b)
    if np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)):
        return LeafDiff(key, path, "same")
    a, b = _numbers(entry_a, a), _numbers(entry_b, b)
    if a is None or b is None:
        return LeafDiff(key, path, "changed")
    return LeafDiff(key, path, "changed", max_abs_diff=_max_abs_diff(a, b))


def _numbers(entry: dict, array: np.ndarray) -> np.ndarray | None:
    """The leaf's values as a numeric array, or None when it has no numeric values."""
    if entry["kind"] in ("str", "bytes", "bigint", "none") or array.dtype.kind not in "biufc":
        return None
    if not bits_only(entry):
        return array
    if leaf_dtype(entry) == "bfloat16":  # the top half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return None


def _describe_change(entry_a: dict, entry_b: dict) -> str | None:
    """Why two leaves differ without reading them (type, dtype, shape), or None."""
    if entry_a["kind"] != entry_b["kind"]:
        return f"type {entry_a['kind']} -> {entry_b['kind']}"
    if entry_a["kind"] not in _ARRAY_KINDS:
        return None
    if entry_a["dtype"] != entry_b["dtype"] or leaf_dtype(entry_a) != leaf_dtype(entry_b):
        return f"dtype {leaf_dtype(entry_a)} -> {leaf_dtype(entry_b)}"
    if entry_a["shape"] != entry_b["shape"]:
        return f"shape {tuple(entry_a['shape'])} -> {tuple(entry_b['shape'])}"
    return None


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over elements; NaN where only one side is NaN, 0 where both are."""
    wide = np.complex128 if a.dtype.kind == "c" else np.float64
    x, y = a.astype(wide), b.astype(wide)
    with np.errstate(invalid="ignore"):
        equal = (x == y) | (np.isnan(x) & np.isnan(y))
        return float(np.where(equal, 0.0, np.abs(x - y)).max()) if x.size else 0.0


# ---------------------------------------------------------------- prune


def prune(directory: str | os.PathLike[str], policy: Policy, *, dry_run: bool = False,
          lock_timeout: float | None = None) -> PruneResult:
    """Delete the steps ``policy`` does not keep; never the newest one.

    Each step goes the way the manager deletes: under the writer lock, renamed to
    a trash name, then removed. Refuses a ``KeepBest`` whose metric no checkpoint
    carries (a typo would otherwise delete the best checkpoint).
    """
    directory = checkpoint_dir(directory)
    infos, _ = _infos(directory)
    _check_metrics(policy, infos)
    kept = retained_steps(policy, infos)
    doomed = [StepRow(step=i.step, path=i.path, nbytes=_step_size(i), time=i.time,
                      metrics=i.metrics) for i in infos if i.step not in kept]
    if not dry_run:
        # one lock, one directory fsync and one cache rewrite for all of them (a
        # step another writer deleted first is skipped)
        manager = CheckpointManager(directory, keep=policy, lock_timeout=lock_timeout)
        manager._delete_steps([row.step for row in doomed])
    return PruneResult(deleted=doomed, kept=sorted(kept), dry_run=dry_run)
