"""``CheckpointManager``: step-numbered checkpoints in one directory.

Orchestration only: the tree, file format, manifest, filesystem steps and policies
live in their own modules. The commit protocol (under the writer lock):

1. remove leftovers of crashed writers; refuse a step that exists;
2. create ``.tmp-step_<N>-...`` next to the final directory;
3. write ``state.h5`` and fsync it (checksums are computed from memory); with
   ``incremental=True`` hard-link first the earlier files that hold the large
   leaves that did not change (:mod:`ckpt.incremental`), which it then references;
4. write ``manifest.json``, fsync it, fsync the temporary directory;
5. rename it to ``step_<N>`` and fsync the directory: the commit;
6. only then prune: rename each doomed step to ``.trash-...``, fsync, delete.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckpt import _failpoints, fsutil, h5format, incremental, manifest, storage
from ckpt._gcpause import gc_paused
from ckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CorruptCheckpointError,
    SaveError,
    StepExistsError,
)
from ckpt.policies import (
    KeepAll,
    KeepBest,
    Policy,
    StepInfo,
    check_schedule,
    decides_by_step,
    is_due,
    retained_steps,
    to_spec,
)
from ckpt.restore import restore_into
from ckpt.storage.listing import Listing
from ckpt.tree import encode_tree

__all__ = ["CheckpointManager"]

log = logging.getLogger("ckpt")


class CheckpointManager:
    """Save, list, prune and restore step-numbered checkpoints in ``directory``.

    Args:
        directory: where checkpoints live; created by the first save, never by a
            reader (a reader of a missing directory lists no steps, and ``restore``
            raises ``CheckpointNotFoundError`` naming it).
        keep: retention policy (default :class:`~ckpt.KeepAll`); combine with ``|``.
        save_every: save only steps divisible by this (``save`` of others is a no-op).
        save_every_seconds: save when this long has passed since the last save
            (measured with ``time.monotonic`` in this process; after a restart, from
            the newest manifest's time, a time in the future counting as now).
        async_save: stage the state in memory and write it in the background.
        lock_timeout: seconds to wait for another writer; ``None`` waits for ever.
        progress: tqdm bars for long saves/restores; ``None`` = only on a terminal.
        storage_options: for a URL ``directory`` (``s3://bucket/run``), the fsspec
            filesystem's options (``{"endpoint_url": ...}``); without them fsspec
            reads the usual environment variables.
        distributed: in a ``torch.distributed`` job, make ``save`` and ``restore``
            collectives (every rank writes its own shards; one commit). ``None``
            (the default): when a process group of more than one rank is initialized.
            Building the manager is then a collective too.
        timeout: seconds a rank waits for the others in a distributed save or
            restore before raising ``CheckpointError`` (a rank died or stalled).
        incremental: a large leaf whose bytes equal the newest committed step's is
            hard-linked from that step's file instead of written again
            (:mod:`ckpt.incremental`). Local directories only; not with
            ``distributed`` (``ValueError``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep: Policy | None = None,
        save_every: int | None = None,
        save_every_seconds: float | None = None,
        async_save: bool = False,
        lock_timeout: float | None = None,
        progress: bool | None = None,
        storage_options: dict | None = None,
        distributed: bool | None = None,
        timeout: float | None = None,
        incremental: bool = False,
    ) -> None:
        save_every, save_every_seconds = check_schedule(save_every, save_every_seconds)
        self.root = os.fspath(directory)
        if storage.is_url(self.root):
            self.root = self.root.rstrip("/")
            self.directory: Path | str = self.root
        else:
            self.directory = Path(directory)
        self.store = storage.open_store(self.root, storage_options)
        self.keep = keep if keep is not None else KeepAll()
        self.save_every = save_every
        self.save_every_seconds = save_every_seconds
        self.lock_timeout = lock_timeout
        self.progress = progress
        self._cache: dict[int, tuple[tuple, StepInfo | None]] = {}
        # local directories only: object stores have no inodes and no atomic rename
        self._listing = Listing(self.root) if self.store.local else None
        # Only a time schedule needs the last save time, and only the newest step's:
        # reading every manifest here made a fresh manager cost O(steps) (issue 15).
        # Listing the directory anyway says at once that it is a file or unreadable.
        newest = self._newest_info() if save_every_seconds is not None else None
        if save_every_seconds is None:  # an unreadable directory or a file fails here
            self._listed(self._listing.probe if self._listing else self._store_step_dirs)
        self._last_save_time = _monotonic_since(newest.time if newest else None)
        self.last_restored_step: int | None = None  # which step the last restore() read
        self._writer = None
        _check_incremental(incremental, self.store.local, distributed is True)
        self._collective = _collective(distributed, timeout)
        # schedule and stop decisions get a group of their own: a background save may
        # be running its collectives on the first one meanwhile
        self._control = None if self._collective is None else _collective(True, timeout)
        # also when a running process group made this manager distributed by default
        self.incremental = _check_incremental(incremental, self.store.local,
                                              self._collective is not None)
        if async_save:
            from ckpt.async_writer import AsyncWriter

            self._writer = AsyncWriter(self._commit if self._collective is None
                                       else self._commit_distributed)

    # ------------------------------------------------------------ listing

    def _step_dirs(self) -> dict[int, str]:
        return self._listed(self._listing.scan if self._listing else self._store_step_dirs)

    def _step_list(self) -> tuple[list[int], Any]:
        """The steps of :meth:`_step_dirs` in order, and a function giving a step's
        path: on local disk, without building 10,000 paths to list 10,000 steps."""
        if self._listing is None:
            step_dirs = self._step_dirs()
            return list(step_dirs), step_dirs.__getitem__
        names = self._listed(self._listing.scan_names)
        prefix = os.path.join(self.root, "")  # a local path: there is a listing
        return sorted(names), lambda step: prefix + names[step]

    def _store_step_dirs(self) -> dict[int, str]:
        return self.store.step_dirs(self.root)

    def _listed(self, list_steps: Any) -> dict[int, str]:
        try:
            return list_steps()
        except FileNotFoundError:  # created by the first save: a reader sees no steps yet
            return {}
        except NotADirectoryError:
            raise CheckpointError(f"{self.directory} is not a directory") from None
        except PermissionError as error:
            raise CheckpointPermissionError.from_os_error(
                str(self.directory), "list the checkpoint directory", error) from None

    def _info(self, step: int, step_dir: str) -> StepInfo | None:
        if self._listing is not None:
            listed = self._listing.lookup(step, step_dir)
            if listed is not None:
                return listed
        checked_at = time.time_ns()  # before the stat: the listing cache's racy rule
        signature = self.store.signature(storage.join(step_dir, manifest.MANIFEST_NAME))
        if signature is None:  # missing, a symlink loop, no permission: not a checkpoint
            return None
        cached = self._cache.get(step)
        if cached and cached[0] == signature:
            info = cached[1]
        else:
            try:
                info = manifest.step_info(manifest.read(step_dir, step), step_dir)
            except FileNotFoundError:  # pruned by a writer while we looked
                return None
            except CorruptCheckpointError as error:
                # not a checkpoint; said once per manifest version, not on every listing
                log.warning("step %d is not a valid checkpoint: %s", step, error)
                info = None
            self._cache[step] = (signature, info)
        if info is not None and self._listing is not None:
            self._listing.remember(step, signature, info, checked_at)
        return info

    def infos(self) -> list[StepInfo]:
        """Every committed checkpoint (valid manifest), sorted by step.

        Takes no lock. A step listed and then pruned before its manifest was read
        means a writer committed a newer one meanwhile (commit renames come before
        prune renames), so the directory is listed again: a reader racing a
        ``KeepLast(1)`` writer never sees an empty directory (issue 11, item 7).
        On local disk most manifests are only stat'ed: the listing cache
        (:mod:`ckpt.storage.listing`) vouches for those it still describes.
        """
        return self._infos_and_damaged()[0]

    def _infos_and_damaged(self) -> tuple[list[StepInfo], dict[int, str]]:
        """:meth:`infos`, and ``{step: path}`` of the step directories whose manifest
        is not valid (``ckpt ls`` shows them)."""
        listed = self._listing.info_of if self._listing is not None else None
        found, damaged = self._scan(self._info, listed)
        return list(found.values()), damaged

    def _scan(self, resolve: Any, listed: Any) -> tuple[dict[int, Any], dict[int, str]]:
        """``{step: value}`` of the committed checkpoints in step order, and
        ``{step: path}`` of the damaged ones, with the rescan rule of :meth:`infos`.

        The value is ``listed(step)`` for a step the listing cache vouches for (True
        if ``listed`` is None), else ``resolve(step, step_dir)``, None for a step that
        is not a checkpoint.
        """
        for _ in range(fsutil.RESCANS):
            damaged, vanished = {}, False
            steps, path_of = self._step_list()
            vouched = self._listing.vouched(steps) if self._listing is not None else ()
            # loops that run in C where they can: this runs over 10,000 steps
            if listed is None:
                values = dict.fromkeys(vouched, True)
            else:  # a record whose details are unreadable (None) is resolved instead
                values = {step: value for step in vouched
                          if (value := listed(step)) is not None}
            for step in [step for step in steps if step not in values]:
                step_dir = path_of(step)
                value = resolve(step, step_dir)
                if value is not None:
                    values[step] = value
                elif self.store.committed(step_dir):
                    damaged[step] = step_dir
                else:
                    vanished = True
            if not vanished:
                break
        if len(values) == len(steps):
            return dict(zip(steps, map(values.__getitem__, steps))), damaged
        return {step: values[step] for step in steps if step in values}, damaged

    def info(self, step: int) -> StepInfo:
        """What the manifest of ``step`` says (time, metrics, metadata, size)."""
        step_dir = self._step_dirs().get(step)
        if step_dir is None:
            raise CheckpointNotFoundError(self._step_path(step), step)
        return manifest.step_info(manifest.read(step_dir, step), step_dir)

    def step_numbers(self) -> list[int]:
        """Steps of every ``step_<N>`` directory, damaged ones included, ascending."""
        return sorted(self._step_dirs())

    def all_steps(self) -> list[int]:
        """Steps of all committed checkpoints, ascending."""
        return list(self._scan(self._info, None)[0])

    def latest_step(self) -> int | None:
        """The newest committed step, or None when there is none."""
        newest = self._newest(self._is_valid)
        return newest[0] if newest is not None else None

    def _is_valid(self, step: int, step_dir: str) -> bool | None:
        """Whether ``step`` is a committed checkpoint (None if not), without building
        its :class:`StepInfo` where the listing cache vouches for it."""
        if self._listing is not None and self._listing.vouches(step, step_dir):
            return True
        return True if self._info(step, step_dir) is not None else None

    def _newest_info(self) -> StepInfo | None:
        newest = self._newest(self._info)
        return newest[1] if newest is not None else None

    def _newest(self, resolve: Any) -> tuple[int, Any] | None:
        """``(step, resolve(step, dir))`` of the newest committed checkpoint, trying
        steps newest first only until one is valid. The rescan rule of :meth:`infos`
        holds: a candidate pruned while we looked means a newer step was committed
        first, so the directory is listed again."""
        for _ in range(fsutil.RESCANS):
            vanished = False
            steps, path_of = self._step_list()
            for step in reversed(steps):
                step_dir = path_of(step)
                found = resolve(step, step_dir)
                if found is not None:
                    return step, found
                if not self.store.committed(step_dir):
                    vanished = True
                    break
            if not vanished:
                return None
        return None

    def best_step(self, metric: str | None = None, mode: str | None = None) -> int | None:
        """The step with the best ``metric``; defaults to the ``KeepBest`` in ``keep``.

        ``mode`` as in :class:`~ckpt.KeepBest`: ``"auto"`` (the default) infers the
        direction from the metric's name and refuses a name that gives none.
        """
        best = _find_best(self.keep)
        if metric is None:
            if best is None:
                raise ValueError("best_step() needs a metric: keep= has no KeepBest policy")
            metric, mode = best.metric, mode or best.mode
        ranked = KeepBest(metric, mode=mode or "auto").ranked(self.infos())
        return ranked[0].step if ranked else None

    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` would save under the schedule."""
        return is_due(_as_step(step), time.monotonic(), self._last_save_time,
                      every=self.save_every, every_seconds=self.save_every_seconds)

    # -------------------------------------------------------------- save

    def save(self, step: int, state: Any, *, metrics: dict | None = None,
             metadata: Any = None, force: bool = False) -> bool:
        """Save ``state`` as checkpoint ``step``; returns whether it saved.

        Steps the schedule does not ask for are skipped (returns False) unless
        ``force``. ``step`` is an int >= 0 (numpy integers are accepted and stored
        as int). Raises ``StepExistsError`` for a step already on disk and
        ``UnsupportedTypeError`` (before writing anything) for a bad leaf or metric.
        The directory is created here if it does not exist.
        """
        step = _as_step(step)
        if not force and not self._due(step):
            return False
        final = self._step_path(step)
        if self.store.committed(final):  # checked again under the lock; fails fast (async too)
            raise StepExistsError(final, step)
        clean = manifest.clean_metrics(metrics)
        manifest.check_metadata(metadata, max_bytes=manifest.MAX_METADATA_BYTES)
        if self._collective is not None:
            from ckpt import dist_save

            if self._writer is None:
                dist_save.save(self, self._collective, step, state, clean, metadata)
            else:  # stage this rank's own leaves; the protocol runs on the writer thread
                self._writer.wait()  # its collectives come before this save's
                treedef, leaves, shards, mine = dist_save.prepare(self._collective, state)
                self._writer.submit(step, (treedef, shards, mine), leaves, clean, metadata,
                                    only=mine)
            self._last_save_time = time.monotonic()
            return True
        treedef, leaves = encode_tree(state)
        if self._writer is not None:
            self._writer.submit(step, treedef, leaves, clean, metadata)
        else:
            self._commit(step, treedef, leaves, clean, metadata)
        self._last_save_time = time.monotonic()
        return True

    def _commit(self, step: int, treedef: Any, leaves: list, metrics: dict,
                metadata: Any) -> None:
        final = self._step_path(step)
        started = time.perf_counter()
        try:
            self.store.makedirs(self.root)
            with self.store.writer_lock(self.root, self.lock_timeout), self._writing():
                _failpoints.hit("lock.acquired")
                self._commit_locked(final, step, treedef, leaves, metrics, metadata)
                log.info("saved step %d to %s in %.2f s", step, final,
                         time.perf_counter() - started)
                self._prune()
        except OSError as error:
            if isinstance(error, CheckpointError):
                raise
            # name the file that failed (the lock file of a read-only directory, say)
            raise SaveError.from_os_error(error.filename or final, step, error) from error

    def _commit_distributed(self, step: int, plan: tuple, leaves: list, metrics: dict,
                            metadata: Any) -> None:
        from ckpt import dist_save

        dist_save.write(self, self._collective, step, plan, leaves, metrics, metadata)

    def _due(self, step: int) -> bool:
        """``should_save``, decided by rank 0 in a distributed job when time-based
        (clocks and save times differ between ranks; every rank must save together)."""
        due = self.should_save(step)
        if self._collective is None or self.save_every_seconds is None:
            return due
        decided = self._control.broadcast_bytes(b"1" if due else b"0")
        return decided == b"1"

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (``flag`` itself outside a distributed job)."""
        if self._control is None:
            return flag
        return not self._control.all_ok(not flag)

    @property
    def coordinator(self) -> bool:
        """True on the one process that decides for a distributed job (rank 0), and
        always outside one."""
        return self._collective is None or self._collective.rank == 0

    def barrier(self) -> None:
        """Wait for every rank of a distributed job (nothing outside one)."""
        if self._control is not None:
            self._control.barrier()

    def _commit_locked(self, final: str, step: int, treedef: Any, leaves: list,
                       metrics: dict, metadata: Any) -> None:
        self.store.remove_leftovers(self.root)
        if self.store.committed(final):
            raise StepExistsError(final, step)
        writer = self.store.begin_step(self.root, fsutil.step_dir_name(step))
        try:
            shared = self._plan_incremental(leaves, writer.location)
            index = h5format.write_state(
                storage.join(writer.location, manifest.DATA_NAME), treedef, leaves,
                progress=self.progress,
                sink=lambda size, chunks, progress: writer.write_file(
                    manifest.DATA_NAME, size, chunks, progress),
                shared=shared.shared, digests=shared.digests, files=shared.files or None)
            record = manifest.build(step, time.time(), metrics, metadata, index,
                                    retention=to_spec(self.keep), extra_files=shared.files)
            writer.commit(manifest.encode(record))
        except BaseException:
            writer.abort()
            raise
        self._remember(step, record)

    def _plan_incremental(self, leaves: list, location: str) -> incremental.Plan:
        """What this save links from the newest committed step (under the writer
        lock, so no writer prunes that step meanwhile), the links made in
        ``location``; an empty plan unless ``incremental``."""
        if not self.incremental:
            return incremental.Plan()
        newest = self._newest(self._info)
        previous = (newest[0], newest[1].path) if newest is not None else None
        return incremental.link_files(incremental.plan(leaves, previous), location)

    def _remember(self, step: int, record: dict) -> None:
        # pruning lists every step next: spare it re-reading the manifest just written
        final = self._step_path(step)
        signature = self.store.signature(storage.join(final, manifest.MANIFEST_NAME))
        if signature is not None:
            self._cache[step] = (signature, manifest.step_info(record, final))

    def _step_path(self, step: int) -> str:
        return storage.join(self.root, fsutil.step_dir_name(step))

    def _prune(self) -> None:
        if type(self.keep) is KeepAll:  # the default: nothing to decide (45 ms next to
            return  # 10,000 steps, to list and stat every one of them and delete none)
        # a pruning of 10,000 steps builds tens of thousands of StepInfos, none in a
        # cycle: the collections they would trigger walk every live object (1 ms)
        with gc_paused():
            if decides_by_step(self.keep):
                doomed = self._doomed_by_step()
            else:
                infos = self.infos()
                kept = retained_steps(self.keep, infos)
                doomed = [info for info in infos if info.step not in kept]
        if not doomed:
            return
        log.info("retention: deleting steps %s", [info.step for info in doomed])
        try:
            self._remove_steps({info.step: info.path for info in doomed})
        except OSError as error:
            # The new step is committed and safe; the next save prunes again (and
            # clears a half-deleted trash directory), so this is no reason to report
            # the save itself as failed.
            if self.store.local:
                fsutil.mark_unclean(self.root)  # a .trash- directory may be left
            warnings.warn(f"ckpt: could not delete steps {[i.step for i in doomed]} "
                          f"({self.directory}): {error}", stacklevel=4)
            log.warning("could not delete steps %s: %s", [i.step for i in doomed], error)

    def _doomed_by_step(self) -> list[StepInfo]:
        """What a :func:`~ckpt.policies.decides_by_step` policy deletes, reading only
        the manifests of the steps it keeps and of those it deletes.

        The answer is the one over every valid manifest: a kept step found damaged
        is dropped and the policy asked again; a damaged step it would not keep is
        never deleted (pruning deletes only checkpoints) and, by the property of
        such policies, does not change what they keep.
        """
        candidates = self._step_dirs()
        vouched = self._listing.vouched(candidates) if self._listing is not None else ()
        while True:
            kept = retained_steps(self.keep, [StepInfo(step=step, time=0.0, path=path)
                                              for step, path in candidates.items()])
            damaged = [step for step in kept if step not in vouched
                       and self._info(step, candidates[step]) is None]
            if not damaged:
                break
            for step in damaged:
                del candidates[step]
        return [StepInfo(step=step, time=0.0, path=path) for step, path in candidates.items()
                if step not in kept
                and (step in vouched or self._info(step, path) is not None)]

    def _forget(self, *steps: int) -> None:
        """Before removing ``steps``: no cache may vouch for them any more."""
        for step in steps:
            self._cache.pop(step, None)
        if self._listing is not None:
            self._listing.invalidate()
            self._listing.forget(steps)

    def _remove_steps(self, paths: dict[int, str]) -> None:
        """Under the writer lock: delete the step directories ``{step: path}``,
        forgotten first; once all are gone, the rest of the write lists what it
        listed less these (:meth:`Listing.removed`)."""
        if not paths:
            return
        self._forget(*paths)
        self.store.remove_steps(list(paths.values()))
        if self._listing is not None:
            self._listing.removed(paths)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Under the writer lock: the listing cache rewritten once the work is done."""
        if self._listing is None:
            yield
            return
        self._listing.begin_write()
        try:
            yield
            if self._listing.stale():
                # the valid steps, those the cache vouched for as True: their records
                # are carried over without reading their details (infos() would)
                self._listing.write(self._scan(self._info, None)[0])
        finally:
            self._listing.end_write()

    def _delete_steps(self, steps: list[int]) -> list[int]:
        """Delete ``steps`` (those still there) under one writer lock; the deleted ones.

        For ``ckpt prune``: one lock, one directory fsync and one cache rewrite for
        all of them instead of one each.
        """
        self.wait_until_finished()
        if not self.store.isdir(self.root):
            return []
        try:
            with self.store.writer_lock(self.root, self.lock_timeout), self._writing():
                present = self._step_dirs()
                doomed = [step for step in steps if step in present]
                self._remove_steps({step: present[step] for step in doomed})
        except PermissionError as error:
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointPermissionError.from_os_error(
                str(self.directory), f"delete steps {doomed}", error) from None
        return doomed

    def delete(self, step: int) -> None:
        """Delete checkpoint ``step`` (also a damaged one) under the writer lock."""
        self.wait_until_finished()
        step = _as_step(step)
        with self._locked_step(step, f"delete step {step}") as step_dir:
            self._forget(step)
            self.store.remove_step(step_dir)

    def set_aside(self, step: int) -> Path:
        """Move checkpoint ``step`` (typically a damaged one) out of the step namespace.

        It is renamed to ``damaged-step_<N>-...`` in the same directory, kept for
        inspection, never listed, and its step number is free to be saved again.
        """
        self.wait_until_finished()
        step = _as_step(step)
        with self._locked_step(step, f"set step {step} aside") as step_dir:
            self._forget(step)
            target = self.store.set_aside(step_dir, fsutil.aside_name(fsutil.step_dir_name(step)))
        log.warning("set step %d aside as %s", step, target)
        return Path(target) if self.store.local else target

    @contextlib.contextmanager
    def _locked_step(self, step: int, action: str) -> Iterator[str]:
        """The directory of ``step`` under the writer lock; errors name the path."""
        missing = CheckpointNotFoundError(self._step_path(step), step)
        if not self.store.isdir(self.root):
            raise missing  # taking the lock would create the directory
        try:
            with self.store.writer_lock(self.root, self.lock_timeout), self._writing():
                step_dir = self._step_dirs().get(step)
                if step_dir is None:
                    raise missing
                yield step_dir
        except PermissionError as error:
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointPermissionError.from_os_error(str(self.directory), action,
                                                          error) from None

    # ----------------------------------------------------------- restore

    def restore(self, step: int | None = None, *, into: Any = None, keys: Any = None,
                strict: bool = True, verify: bool = True, device: Any = None) -> Any:
        """Restore checkpoint ``step``, or the newest one that verifies.

        Without a step, a checkpoint that fails verification is skipped with a
        warning naming it and why, and the next older one is tried. With ``into``,
        numpy arrays in the template are filled in place, stateful objects get
        ``load_state_dict``, and the filled template is returned; ``strict`` makes
        any difference raise one ``StateMismatchError`` listing all of them.
        ``keys`` restores only the named subtrees. ``device`` places torch tensors
        of a restore without ``into`` (default CPU; with ``into`` they are copied to
        wherever the template's tensors live).
        """
        self.wait_until_finished()
        if self._collective is not None:
            from ckpt import dist_save

            return dist_save.restore(self, self._collective, None if step is None
                                     else _as_step(step), into, keys, strict, verify, device)
        if step is not None:
            return self._restore_step(_as_step(step), into, keys, strict, verify, device)
        skipped, tried = [], set()
        for _ in range(fsutil.RESCANS):
            candidates = [s for s in sorted(self._step_dirs(), reverse=True) if s not in tried]
            vanished = False
            for candidate in candidates:
                tried.add(candidate)
                try:
                    return self._restore_step(candidate, into, keys, strict, verify, device)
                except CorruptCheckpointError as error:
                    warnings.warn(f"ckpt: skipping step {candidate}: {error}", stacklevel=2)
                    log.warning("skipping step %d: %s", candidate, error)
                    skipped.append(candidate)
                except CheckpointNotFoundError as error:
                    if error.step != candidate:
                        raise
                    # pruned by a writer while we read it, so it committed a newer step
                    # first: list again rather than fall back to older ones (or none)
                    vanished = True
                    break
            if not vanished:
                break
        if skipped:
            raise CorruptCheckpointError(self.directory, "no checkpoint verifies "
                                         f"(skipped steps {skipped})")
        if not self.store.isdir(self.root):
            raise CheckpointNotFoundError(self.directory, detail="no such directory")
        raise CheckpointNotFoundError(self.directory, detail="no checkpoints in this directory")

    def _restore_step(self, step: int, into: Any, keys: Any, strict: bool,
                      verify: bool, device: Any) -> Any:
        step_dir = self._step_path(step)
        try:
            record = manifest.read(step_dir, step)
            restored = self._read_tree(step_dir, record, keys, verify, device, into, strict)
        except FileNotFoundError as error:
            if not self.store.committed(step_dir):
                raise CheckpointNotFoundError(step_dir, step) from None
            raise CorruptCheckpointError(getattr(error, "filename", None) or step_dir,
                                         "data file is missing", step=step) from None
        except CorruptCheckpointError as error:
            if not self.store.committed(step_dir):
                # pruned while we read it: an object store has no open-file semantics,
                # so the read failed instead of finishing from a deleted file
                raise CheckpointNotFoundError(step_dir, step) from None
            raise error.for_step(step) from None
        self.last_restored_step = step
        return restored

    def _read_tree(self, step_dir: str, record: dict, keys: Any, verify: bool,
                   device: Any, into: Any = None, strict: bool = True) -> Any:
        data_path, index = manifest.open_data(step_dir, record["step"], record)
        if into is not None and (self._collective is not None or "distributed" in record):
            from ckpt import dist_save  # FQN state dicts and DTensor boxes

            return dist_save.read_into(data_path, index, into, keys=keys, strict=strict,
                                       verify=verify, progress=self.progress, where=step_dir)
        if into is not None:
            return restore_into(data_path, index, into, keys=keys, strict=strict,
                                verify=verify, progress=self.progress, where=step_dir)
        return h5format.read_tree(data_path, index, keys=keys, verify=verify, device=device,
                                  progress=self.progress)

    # ----------------------------------------------------------- polling

    def wait_for_new_step(self, after: int | None = None, timeout: float | None = None,
                          poll_interval: float = 0.5) -> int | None:
        """Block until a committed step newer than ``after`` exists; return it.

        For evaluators that follow a training run from another process. Returns the
        newest such step, or None when ``timeout`` seconds pass first. ``after=None``
        accepts any step.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            latest = self.latest_step()
            if latest is not None and (after is None or latest > after):
                return latest
            if deadline is not None and time.monotonic() >= deadline:
                return None
            remaining = poll_interval if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(poll_interval, remaining)))

    def new_steps(self, after: int | None = None, timeout: float | None = None,
                  poll_interval: float = 0.5) -> Iterator[int]:
        """Yield newly committed steps in order, as they appear.

        Ends when no new step appears for ``timeout`` seconds (``None``: never).
        Steps committed and pruned between two polls are not seen; a step pruned
        after it was yielded makes ``restore`` raise ``CheckpointNotFoundError``,
        which an evaluator can catch to move on.
        """
        last = after
        while True:
            latest = self.wait_for_new_step(last, timeout, poll_interval)
            if latest is None:
                return
            for step in self.all_steps():
                if last is None or step > last:
                    yield step
                    last = step

    # ---------------------------------------------------------- lifetime

    def wait_until_finished(self) -> None:
        """Block until a background save is committed; re-raise its error."""
        if self._writer is not None:
            self._writer.wait()

    def close(self) -> None:
        """Wait for a pending save and stop the background writer."""
        if self._writer is not None:
            self._writer.close()
        for collective in (self._control, self._collective):
            if collective is not None:
                collective.close()
        self._control = self._collective = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[int]:
        return iter(self.all_steps())

    def __repr__(self) -> str:
        return f"CheckpointManager({str(self.directory)!r}, keep={self.keep!r})"


def _as_step(step: object) -> int:
    """``step`` as an int; numpy integers are fine, str, float and bool are not."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"a step must be an int (numpy integers too), got {step!r} "
                        f"({type(step).__name__})")
    if step < 0:
        raise ValueError(f"a step must be >= 0, got {step}")
    return int(step)


def _monotonic_since(saved_at: float | None) -> float | None:
    """The ``time.monotonic()`` reading of wall-clock time ``saved_at``.

    A time in the future (a clock that went back, another node's clock) counts as
    now: otherwise ``save_every_seconds`` would not save until the clock caught up.
    """
    if saved_at is None:
        return None
    return time.monotonic() - max(0.0, time.time() - saved_at)


def _collective(distributed: bool | None, timeout: float | None) -> Any:
    """ckpt's collectives when this manager saves and restores as a distributed job."""
    if distributed is False:
        return None
    dist = sys.modules.get("torch.distributed")  # never import torch for a numpy user
    running = (dist is not None and dist.is_available() and dist.is_initialized()
               and dist.get_world_size() > 1)
    if distributed is None and not running:
        return None
    from ckpt.distributed import DEFAULT_TIMEOUT, Collective

    return Collective(DEFAULT_TIMEOUT if timeout is None else timeout)


def _check_incremental(incremental: bool, local: bool, distributed: bool) -> bool:
    """``incremental``, refused where hard links cannot share the bytes."""
    if incremental and not local:
        raise ValueError("incremental=True needs a local directory: an object store has "
                         "no hard links (save in full, or to local disk)")
    if incremental and distributed:
        raise ValueError("incremental=True is not supported with distributed saves "
                         "(each rank's file would need its own links); pass "
                         "distributed=False or incremental=False")
    return bool(incremental)


def _find_best(policy: Policy) -> KeepBest | None:
    parts = getattr(policy, "policies", (policy,))
    return next((p for p in parts if isinstance(p, KeepBest)), None)
