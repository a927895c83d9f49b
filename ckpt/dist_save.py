"""A manager's save and restore as collectives of a ``torch.distributed`` job.

Save, on every rank at the same step (issue 13):

1. every rank turns the state into a tree (models and optimizers as torch's FQN
   state dicts, each DTensor as its local shard) and agrees that it could;
2. rank 0 takes the writer lock, cleans leftovers, begins the step and broadcasts
   its temporary location;
3. each rank writes the leaves it owns to ``state.rank<r>.h5`` (shards: the rank at
   coordinate 0 of every replicated mesh dimension; replicated leaves: large ones
   spread over the ranks by size, small ones rank 0) and fsyncs it;
4. an all-gather of what each rank wrote (file size, index checksum, pieces), or
   of its error;
5. only if every rank succeeded, rank 0 writes ``state.h5`` (the step's index: the
   tree, and for every leaf the file and leaf, or the shards with their offsets,
   holding its bytes), the manifest listing every file, commits, and prunes;
6. a broadcast of the outcome, so that every rank returns or raises together.

A rank that dies makes the others raise :class:`~ckpt.CheckpointError` within the
collective timeout; nothing is committed and the next writer removes the leftovers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from typing import Any

import numpy as np

from ckpt import fsutil, h5format, manifest, storage
from ckpt._types import KeyPath
from ckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    SaveError,
    StepExistsError,
)
from ckpt.policies import to_spec
from ckpt.restore import restore_into
from ckpt.tree import encode_leaf, flatten, keystr, normalize_keys

__all__ = ["prepare", "save", "write", "restore", "read_into", "rank_file"]

log = logging.getLogger("ckpt")


def rank_file(rank: int) -> str:
    """The name of the data file rank ``rank`` writes."""
    return f"state.rank{rank}.h5"


def _encode(state: Any) -> tuple[Any, list, dict]:
    from ckpt.integrations import torch_distributed as td

    tree, _ = td.plain_state(state)
    tree, shards = td.split_dtensors(tree)
    # no aliases across leaves: an alias's base may be written by another rank
    treedef, leaves = flatten(tree)
    encoded = [(path, *encode_leaf(value, path)) for path, value in leaves]
    return treedef, encoded, shards


def _owned(encoded: list, shards: dict, rank: int, size: int) -> list[int]:
    """Numbers of the leaves this rank writes (the same rule on every rank)."""
    mine, big = [], []
    for number, (path, _, array, _) in enumerate(encoded):
        shard = shards.get(tuple(path))
        if shard is not None:
            if shard.owner and array.size:
                mine.append(number)
        elif array.nbytes >= h5format.PACK_THRESHOLD:
            big.append(number)
        elif rank == 0:
            mine.append(number)
    # large replicated leaves to the least-loaded rank, largest first: in parallel
    load = [0] * size
    for number in sorted(big, key=lambda n: (-encoded[n][2].nbytes, n)):
        target = min(range(size), key=lambda r: (load[r], r))
        load[target] += encoded[number][2].nbytes
        if target == rank:
            mine.append(number)
    return sorted(mine)


def _agree(coll: Any, error: BaseException | None, what: str) -> None:
    """Raise on every rank when any rank had ``error`` (its own error on that rank)."""
    if coll.all_ok(error is None):
        return
    if error is not None:
        raise error
    raise CheckpointError(f"rank {coll.rank}: another rank failed to {what}; nothing saved")


def prepare(coll: Any, state: Any) -> tuple[Any, list, dict, list[int]]:
    """Every rank's tree of ``state`` (treedef, encoded leaves, DTensor shards, and the
    numbers of the leaves this rank writes); raises on every rank if any rank failed."""
    error: BaseException | None = None
    prepared: Any = None
    try:
        treedef, encoded, shards = _encode(state)
        prepared = (treedef, encoded, shards, _owned(encoded, shards, coll.rank, coll.size))
    except Exception as caught:  # noqa: BLE001 - handed to every rank below
        error = caught
    _agree(coll, error, "prepare its state")
    return prepared


def save(mgr: Any, coll: Any, step: int, state: Any, metrics: dict, metadata: Any) -> None:
    """Save ``state`` as step ``step`` of ``mgr`` on every rank of ``coll`` (a collective)."""
    treedef, encoded, shards, mine = prepare(coll, state)
    write(mgr, coll, step, (treedef, shards, mine), encoded, metrics, metadata)


def write(mgr: Any, coll: Any, step: int, plan: tuple, encoded: list, metrics: dict,
          metadata: Any) -> None:
    """Steps 2-6 of the protocol for a prepared state (on the caller's thread, or on
    the background writer's with staged copies of this rank's leaves)."""
    treedef, shards, mine = plan
    started = time.perf_counter()
    final = mgr._step_path(step)
    error: BaseException | None = None
    with contextlib.ExitStack() as stack:
        writer = None
        message: dict[str, Any] = {}
        if coll.rank == 0:
            try:
                mgr.store.makedirs(mgr.root)
                stack.enter_context(mgr.store.writer_lock(mgr.root, mgr.lock_timeout))
                stack.enter_context(mgr._writing())  # the listing cache, as a local save
                mgr.store.remove_leftovers(mgr.root)
                if mgr.store.committed(final):
                    raise StepExistsError(final, step)
                writer = mgr.store.begin_step(mgr.root, fsutil.step_dir_name(step))
                message = {"location": writer.location}
            except Exception as caught:  # noqa: BLE001
                error = caught = _as_save_error(caught, final, step)
                message = {"error": _describe(caught), "exists": isinstance(caught,
                                                                           StepExistsError)}
        message = json.loads(coll.broadcast_bytes(json.dumps(message).encode()
                                                  if coll.rank == 0 else None))
        if "error" in message:
            if error is not None:
                raise error
            if message["exists"]:
                raise StepExistsError(final, step)
            raise CheckpointError(f"rank {coll.rank}: rank 0 could not begin step {step}: "
                                  f"{message['error']}")
        if writer is None:
            writer = mgr.store.attach_step(message["location"], final)
        _write_and_commit(mgr, coll, writer, step, treedef, encoded, shards, mine, metrics,
                          metadata)
    log.info("rank %d: saved step %d to %s in %.2f s", coll.rank, step, final,
             time.perf_counter() - started)


def _write_and_commit(mgr: Any, coll: Any, writer: Any, step: int, treedef: Any,
                      encoded: list, shards: dict, mine: list[int], metrics: dict,
                      metadata: Any) -> None:
    report: dict[str, Any] = {"rank": coll.rank}
    try:
        report.update(_write_own(mgr, coll, writer, encoded, shards, mine))
    except Exception as caught:  # noqa: BLE001
        caught = _as_save_error(caught, writer.final, step)
        report["error"] = _describe(caught)
        own_error: BaseException | None = caught
    else:
        own_error = None
    try:
        reports = [json.loads(r) for r in coll.all_gather_bytes(json.dumps(report).encode())]
    except CheckpointError:
        writer.abort()  # a rank died: nothing can commit; the next writer cleans up too
        raise
    failed = [r for r in reports if "error" in r]
    if failed:
        if coll.rank != 0:
            writer.abort()
        coll.barrier()  # every rank removed its own files before rank 0 removes the step
        if coll.rank == 0:
            writer.abort()
        if own_error is not None:
            raise own_error
        first = failed[0]
        raise CheckpointError(f"rank {coll.rank}: rank {first['rank']} failed to write step "
                              f"{step}, nothing saved: {first['error']}")
    outcome: dict[str, Any] = {}
    error: BaseException | None = None
    if coll.rank == 0:
        try:
            _commit(mgr, writer, step, treedef, encoded, shards, reports, metrics, metadata,
                    coll.size)
        except Exception as caught:  # noqa: BLE001
            error = _as_save_error(caught, writer.final, step)
            outcome = {"error": _describe(error)}
            with contextlib.suppress(Exception):
                writer.abort()
    outcome = json.loads(coll.broadcast_bytes(json.dumps(outcome).encode()
                                              if coll.rank == 0 else None))
    if error is not None:
        raise error
    if "error" in outcome:
        raise CheckpointError(f"rank {coll.rank}: rank 0 could not commit step {step}: "
                              f"{outcome['error']}")


def _write_own(mgr: Any, coll: Any, writer: Any, encoded: list, shards: dict,
               mine: list[int]) -> dict:
    """Write this rank's leaves to its own file; what the index needs about them."""
    if not mine:
        return {"pieces": []}
    name = rank_file(coll.rank)
    keys = [keystr(encoded[n][0]) for n in mine]
    local_tree = {"t": "dict", "k": keys, "c": list(range(len(mine)))}
    leaves = [((key,), *encoded[n][1:]) for key, n in zip(keys, mine)]
    index = h5format.write_state(
        storage.join(writer.location, name), local_tree, leaves, progress=mgr.progress,
        sink=lambda size, chunks, progress: writer.write_file(name, size, chunks, progress))
    pieces = []
    for local, number in enumerate(mine):
        shard = shards.get(tuple(encoded[number][0]))
        offsets = shard.offsets if shard is not None else None
        pieces.append([number, local, offsets, list(encoded[number][2].shape)])
    return {"file": name, "nbytes": index["file_nbytes"],
            "index_checksum": index["index_checksum"], "pieces": pieces}


def _commit(mgr: Any, writer: Any, step: int, treedef: Any, encoded: list, shards: dict,
            reports: list[dict], metrics: dict, metadata: Any, world: int) -> None:
    """Rank 0: the step's index file, its manifest, the commit, retention."""
    entries: list[dict[str, Any] | None] = [None] * len(encoded)
    files = {}
    for report in reports:
        if "file" not in report:
            continue
        files[report["file"]] = {"nbytes": report["nbytes"],
                                 "index_checksum": report["index_checksum"]}
        for number, local, offsets, shape in report["pieces"]:
            entry = entries[number]
            if entry is None:
                entry = entries[number] = _global_entry(encoded[number], shards)
            if offsets is None:
                entry["external"] = {"file": report["file"], "leaf": local}
            else:
                entry["shards"].append({"file": report["file"], "leaf": local,
                                        "offsets": offsets, "shape": shape})
    for number, entry in enumerate(entries):
        if entry is None:  # an empty sharded leaf (no rank holds elements of it)
            entries[number] = _global_entry(encoded[number], shards)
            if not shards.get(tuple(encoded[number][0])):
                raise CheckpointError(f"leaf {keystr(encoded[number][0])} was written by no "
                                      "rank (does its shape differ between ranks?)")
    index = h5format.write_state(
        storage.join(writer.location, manifest.DATA_NAME), treedef, [], metadata=None,
        progress=False, external=entries, files=files,
        sink=lambda size, chunks, progress: writer.write_file(manifest.DATA_NAME, size,
                                                              chunks, progress))
    # the index must describe a complete step: every leaf's pieces tile its shape
    h5format.validate_index(index, manifest.DATA_NAME, None)
    record = manifest.build(step, time.time(), metrics, metadata, index,
                            retention=to_spec(mgr.keep), extra_files=files, world_size=world)
    writer.commit(manifest.encode(record))
    mgr._remember(step, record)
    mgr._prune()


def _global_entry(leaf: tuple, shards: dict) -> dict:
    """The step index's entry of a leaf: its global shape, kind and extra."""
    path, kind, array, extra = leaf
    shard = shards.get(tuple(path))
    shape = shard.global_shape if shard is not None else list(array.shape)
    entry: dict[str, Any] = {"path": list(path), "kind": kind, "dtype": array.dtype.str,
                             "shape": shape,
                             "nbytes": int(np.prod(shape, dtype=np.int64)) * array.itemsize}
    if extra:
        entry["extra"] = extra
    if shard is not None:
        entry["shards"] = []
    return entry


def _as_save_error(error: BaseException, final: str, step: int) -> BaseException:
    """An ``OSError`` as the :class:`~ckpt.SaveError` a single-process save raises."""
    if isinstance(error, OSError) and not isinstance(error, CheckpointError):
        return SaveError.from_os_error(error.filename or final, step, error)
    return error


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:2000]}"


# ------------------------------------------------------------------ restore


def restore(mgr: Any, coll: Any, step: int | None, into: Any, keys: Any, strict: bool,
            verify: bool, device: Any) -> Any:
    """``mgr.restore`` on every rank: one step chosen by rank 0, read by all, or the
    next older one when any rank finds the candidate damaged."""
    if step is not None:
        candidates = [step]
    else:
        listed = sorted(mgr._step_dirs(), reverse=True) if coll.rank == 0 else None
        data = coll.broadcast_bytes(json.dumps(listed).encode() if coll.rank == 0 else None)
        candidates = json.loads(data)
    skipped = []
    for candidate in candidates:
        error: BaseException | None = None
        result = None
        try:
            result = mgr._restore_step(candidate, into, keys, strict, verify, device)
        except Exception as caught:  # noqa: BLE001 - every rank must hear of it
            error = caught
        if coll.all_ok(error is None):
            return result
        damaged = isinstance(error, (CorruptCheckpointError, CheckpointNotFoundError))
        if step is not None or (error is not None and not damaged):
            if error is not None:
                raise error
            raise CheckpointError(f"rank {coll.rank}: another rank could not restore step "
                                  f"{candidate}")
        warnings.warn(f"ckpt: skipping step {candidate}: {error or 'damaged on another rank'}",
                      stacklevel=3)
        skipped.append(candidate)
    if skipped:
        raise CorruptCheckpointError(mgr.directory, f"no checkpoint verifies (skipped steps "
                                     f"{skipped})")
    raise CheckpointNotFoundError(mgr.directory, detail="no checkpoints in this directory")


def read_into(data_path: str, index: dict, into: Any, *, keys: Any, strict: bool,
              verify: bool, progress: bool | None, where: str) -> Any:
    """Fill ``into`` (models, optimizers, DTensors, plain leaves) from a distributed
    save's step: each DTensor gets only its own box of the global tensor."""
    from ckpt.integrations import torch_distributed as td

    tree, bindings = td.plain_state(into)
    local_tree, shards = td.split_dtensors(tree)
    regions = {path: (shard.offsets, shard.shape) for path, shard in shards.items()}
    filled = restore_into(data_path, index, local_tree, keys=keys, strict=strict,
                          verify=verify, progress=progress, where=where, regions=regions)
    selected = _selected(keys)
    td.load_bindings([b for b in bindings if _under(b.path, selected)])
    objects = {b.path for b in bindings}
    return _write_back(into, filled, objects, ())


def _selected(keys: Any) -> list[KeyPath]:
    return [()] if keys is None else normalize_keys(keys)


def _under(path: KeyPath, selected: list[KeyPath]) -> bool:
    return any(path[:len(s)] == s or s[:len(path)] == path for s in selected)


def _write_back(node: Any, filled: Any, objects: set, path: KeyPath) -> Any:
    """``node`` holding ``filled``'s values, except models and optimizers (loaded)."""
    if path in objects:
        return node
    if isinstance(node, dict) and isinstance(filled, dict):
        for key in node:
            if key in filled:
                node[key] = _write_back(node[key], filled[key], objects, (*path, key))
        return node
    if isinstance(node, list) and isinstance(filled, list) and len(node) == len(filled):
        node[:] = [_write_back(a, b, objects, (*path, i))
                   for i, (a, b) in enumerate(zip(node, filled))]
        return node
    if type(node) is tuple and isinstance(filled, tuple) and len(node) == len(filled):
        return tuple(_write_back(a, b, objects, (*path, i))
                     for i, (a, b) in enumerate(zip(node, filled)))
    if _is_dtensor(node):
        return node  # its local tensor was filled in place
    return filled


def _is_dtensor(value: Any) -> bool:
    return type(value).__name__ == "DTensor"
