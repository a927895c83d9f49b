"""Incremental saves: a large leaf whose bytes equal the previous step's is linked.

What is shared, and how (issue 15, item 3):

* The unit is a *large* leaf, one with a dataset of its own in ``state.h5``
  (``h5format.PACK_THRESHOLD`` bytes or more). Small leaves are packed and always
  rewritten: they are small.
* A leaf is shared when the newest committed step has a leaf at the same key path
  with the same kind, dtype, shape and extra, and the same xxh3-128 *digest*. The
  index's xxh3-64 checksum is not trusted for the decision: a collision there would
  silently reuse stale bytes. Every large leaf an incremental manager writes gets a
  ``digest`` in its index entry; the digest of every leaf of a new save is computed
  from memory (its cost is part of the save time).
* A shared leaf's bytes stay in the file that first wrote them. The new step's
  directory gets a *hard link* to that file, named after the step that wrote it
  (``data.step<N>.h5``), and its ``state.h5`` index (version 2, as a distributed
  step's) points the leaf at ``{file, leaf}`` in it, with the file's size and index
  checksum in ``files`` and in the manifest. A leaf unchanged over many steps stays
  referenced into the one original file (the previous step's external entry is
  followed, never a link of a link).
* Every step directory is therefore self-contained: deleting any step is removing
  a directory, the filesystem counts the references, and no later step breaks.
* Space: a linked file keeps all of its bytes alive, also those of leaves that have
  changed since. A file is linked only while the leaves still referenced in it hold
  at least ``MIN_LIVE_FRACTION`` of its bytes; otherwise those leaves are written
  afresh, and the old file is freed once the steps that hold it are pruned.

Anything unexpected about the previous step (damaged, another format, a distributed
step's rank files, a filesystem that refuses hard links) makes a full save.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import xxhash

from ckpt import _failpoints, h5format, manifest
from ckpt.errors import CheckpointError, CorruptCheckpointError
from ckpt.index import LINKED_FILE

__all__ = ["Plan", "MIN_LIVE_FRACTION", "digest", "linked_name", "plan", "link_files"]

log = logging.getLogger("ckpt")

MIN_LIVE_FRACTION = 0.5  # of a linked file's bytes that its referenced leaves must hold


@dataclass
class Plan:
    """What an incremental save writes and what it links (``write_state``'s arguments)."""

    digests: dict[int, str] = field(default_factory=dict)  # leaves written afresh
    shared: dict[int, dict] = field(default_factory=dict)  # leaf number -> entry fields
    files: dict[str, dict] = field(default_factory=dict)   # link name -> nbytes, checksum
    sources: dict[str, str] = field(default_factory=dict)  # link name -> file to link


@dataclass(frozen=True)
class _Source:
    """Where the bytes of one leaf of the previous step physically are."""

    name: str    # the link name in a step directory (data.step<N>.h5)
    path: str    # that file in the previous step's directory
    leaf: int    # the leaf's number in that file's own index
    h5: str      # its dataset path in that file
    record: dict  # the file's nbytes and index_checksum


def digest(array: np.ndarray) -> str:
    """xxh3-128 of a C-contiguous array's bytes, as ``"xxh3_128:<hex>"``."""
    return "xxh3_128:" + xxhash.xxh3_128_hexdigest(array.reshape(-1).view(np.uint8))


def linked_name(step: int) -> str:
    """The name a step's data file has when a later step links it."""
    return f"data.step{step}.h5"


def plan(leaves: list, previous: tuple[int, str] | None) -> Plan:
    """Digest every large leaf and share those the ``(step, directory)`` ``previous``
    holds with equal bytes; a full save's plan when it has none or cannot be read."""
    candidates = _candidates(leaves)
    out = Plan(digests={n: digest(leaves[n][2]) for n in candidates})
    if previous is None or not candidates:
        return out
    try:
        old = _previous_leaves(*previous)
    except (CheckpointError, OSError) as error:
        log.info("incremental save: previous step %d unreadable, saving in full: %s",
                 previous[0], error)
        return out
    matches: dict[int, tuple[dict, _Source]] = {}
    for number in candidates:
        path, kind, array, extra = leaves[number]
        found = old.get(tuple(path))
        if found is not None and _same(found[0], kind, array, extra, out.digests[number]):
            matches[number] = found
    for name, numbers in _worth_linking(matches).items():
        for number in numbers:
            entry, source = matches[number]
            out.shared[number] = {
                "external": {"file": name, "leaf": source.leaf, "h5": source.h5},
                "checksum": entry["checksum"], "digest": out.digests.pop(number)}
        out.files[name] = dict(matches[numbers[0]][1].record)
        out.sources[name] = matches[numbers[0]][1].path
    return out


def link_files(plan: Plan, location: str) -> Plan:
    """Hard-link the plan's files into the step directory ``location``.

    Returns the plan, or when the filesystem refuses a link (no hard links, another
    device, too many links to one file) or a linked file is not the one the previous
    step's index vouches for (replaced, truncated), the plan of a full save, links
    removed. Checking costs a read of each linked file's index, not of its data.
    """
    made = []
    try:
        for name, source in plan.sources.items():
            target = os.path.join(location, name)
            os.link(source, target)
            made.append(target)
            _check_linked(target, plan.files[name])
    except (OSError, CheckpointError) as error:
        log.info("incremental save: cannot hard-link %s, saving in full: %s", source, error)
        for target in made:
            with contextlib.suppress(OSError):
                os.unlink(target)
        digests = dict(plan.digests)
        digests.update({n: fields["digest"] for n, fields in plan.shared.items()})
        return Plan(digests=digests)
    _failpoints.hit("incremental.linked")
    return plan


def _check_linked(path: str, record: dict) -> None:
    """The linked file has the size and index the previous step recorded for it."""
    size = os.stat(path).st_size
    if size != record["nbytes"]:
        raise CorruptCheckpointError(path, f"{size} bytes, the previous step's index says "
                                     f"{record['nbytes']}")
    h5format.read_header_index(path, expected_checksum=record["index_checksum"])


def _candidates(leaves: list) -> list[int]:
    """Large leaves that may be shared: not packed, not a tied tensor or its base."""
    bases = {extra["alias"]["of"] for _, _, _, extra in leaves if "alias" in extra}
    return [n for n, (_, _, array, extra) in enumerate(leaves)
            if array.nbytes >= h5format.PACK_THRESHOLD and "alias" not in extra
            and n not in bases]


def _same(entry: dict, kind: str, array: np.ndarray, extra: dict, new_digest: str) -> bool:
    return (entry.get("digest") == new_digest and entry["kind"] == kind
            and entry["dtype"] == array.dtype.str and entry["shape"] == list(array.shape)
            and entry.get("extra", {}) == (extra or {}))


def _previous_leaves(step: int, step_dir: str) -> dict[tuple, tuple[dict, _Source]]:
    """``{key path: (entry, source)}`` of the previous step's shareable leaves."""
    record = manifest.read(step_dir, step)
    if record["version"] < 2:
        return {}  # format 1 predates digests: nothing in it can be compared
    data_path, index = manifest.open_data(step_dir, step, record)
    own = {"nbytes": record["files"][manifest.DATA_NAME]["nbytes"],
           "index_checksum": record["files"][manifest.DATA_NAME]["index_checksum"]}
    files = index.get("files", {})
    # a step saved again under its old number may link its own former file: the
    # names would clash, so then only the leaves already linked are shared
    own_shareable = linked_name(step) not in files
    out = {}
    for number, entry in enumerate(index["leaves"]):
        if not isinstance(entry.get("digest"), str) or "checksum" not in entry:
            continue  # written by a full save: its bytes were never digested
        external = entry.get("external")
        # the index is validated, but not these fields (only incremental saves write them)
        target = (external or entry).get("h5")
        if not isinstance(target, str) or not target.startswith("/"):
            continue
        if external is None and "offset" in entry and own_shareable:
            out[tuple(entry["path"])] = (entry, _Source(linked_name(step), data_path, number,
                                                        target, own))
        elif external is not None and LINKED_FILE.fullmatch(external["file"]):
            name = external["file"]
            out[tuple(entry["path"])] = (entry, _Source(
                name, os.path.join(step_dir, name), external["leaf"], target,
                {"nbytes": files[name]["nbytes"],
                 "index_checksum": files[name]["index_checksum"]}))
    return out


def _worth_linking(matches: dict[int, tuple[dict, _Source]]) -> dict[str, list[int]]:
    """The files to link and the leaves to read from each: those whose referenced
    leaves keep at least ``MIN_LIVE_FRACTION`` of the file's bytes alive."""
    by_file: dict[str, list[int]] = {}
    for number, (_, source) in matches.items():
        by_file.setdefault(source.name, []).append(number)
    out = {}
    for name, numbers in by_file.items():
        live = sum(matches[n][0]["nbytes"] for n in numbers)
        size = matches[numbers[0]][1].record["nbytes"]
        if live >= MIN_LIVE_FRACTION * size:
            out[name] = numbers
        else:
            log.info("incremental save: %s holds %d live bytes of %d; writing them afresh",
                     name, live, size)
    return out
