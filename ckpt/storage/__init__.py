"""Where a checkpoint's bytes live: a small interface and its backends.

Everything above this layer (the manager, the readers, the CLI) names files by a
*location* string -- a local path, or a URL such as ``s3://bucket/run/step_5`` --
and asks :func:`store_for` which :class:`Store` serves it. A store offers what the
commit protocol needs and nothing more:

* list the ``step_<N>`` entries under a root; stat, size and read byte ranges of a
  file (:class:`Reader`, ranges read in parallel where the backend gains from it);
* write a step (:class:`StepWriter`): data files from ``(offset, buffer)`` chunks,
  then :meth:`StepWriter.commit` with the manifest, which is the commit record;
* delete a step, set one aside, clean up what crashed writers left, and serialize
  writers (:meth:`Store.writer_lock`, on the object named :attr:`Store.lock_name`);
* write one whole file that replaces what is there atomically (:meth:`Store.put_file`,
  for ``ckpt.save``).

Two backends: :mod:`ckpt.storage.local` (a POSIX directory: fsync, atomic rename,
a lock file; the guarantees of DESIGN.md) and :mod:`ckpt.storage.remote` (any
fsspec filesystem, S3 tested: no rename, the manifest object written last is the
commit). A new backend is one module implementing :class:`Store`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["Reader", "StepWriter", "Store", "store_for", "open_store", "is_url",
           "join", "basename", "parent"]


def is_url(location: str) -> bool:
    """True for ``scheme://...`` locations (``file://`` included), False for paths."""
    head, sep, _ = location.partition("://")
    return bool(sep) and head.isidentifier()


def join(location: str, *names: str) -> str:
    """``location/name/...`` with the separator the location uses (``/`` for URLs)."""
    if is_url(location):
        return "/".join([location.rstrip("/"), *names])
    import os

    return os.path.join(location, *names)


def basename(location: str) -> str:
    """The last component of a path or URL."""
    return location.rstrip("/").rsplit("/", 1)[-1]


def parent(location: str) -> str:
    """The location one level up."""
    if is_url(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    import os

    return os.path.dirname(os.path.abspath(location))


class Reader:
    """A file open for reading byte ranges; ``name`` is its location, for errors.

    Backends implement :meth:`readinto_at`; :meth:`read_ranges` reads many ranges
    (sequentially here, in parallel where a backend overrides it).
    """

    name: str
    size: int

    def readinto_at(self, view: memoryview, offset: int) -> int:
        """Read up to ``len(view)`` bytes at ``offset`` into ``view``; 0 at the end."""
        raise NotImplementedError

    def read_ranges(self, ranges: Sequence[tuple[int, memoryview]],
                    done: Any = None) -> None:
        """Fill every ``(offset, view)`` completely; ``done(nbytes)`` after each part.

        Raises ``EOFError`` when the file ends before a range does and ``OSError``
        when the backend fails; callers turn both into ``CorruptCheckpointError``.
        """
        for offset, view in ranges:
            self.read_exact(view, offset, done)

    def read_exact(self, view: memoryview, offset: int, done: Any = None) -> None:
        """Fill ``view`` from ``offset``; ``EOFError`` if the file is shorter."""
        filled = 0
        while filled < len(view):
            try:
                count = self.readinto_at(view[filled:filled + IO_CHUNK], offset + filled)
            except OSError as error:
                error.offset = offset + filled  # which leaf failed, for the error message
                raise
            if count == 0:
                error = EOFError(f"{self.name} ends at {offset + filled}")
                error.offset = offset + filled
                raise error
            filled += count
            if done is not None:
                done(count)

    def read(self, offset: int, nbytes: int) -> bytes:
        """Up to ``nbytes`` at ``offset``: fewer only where the file ends."""
        buffer = bytearray(max(0, nbytes))
        view, filled = memoryview(buffer), 0
        while filled < nbytes:
            count = self.readinto_at(view[filled:filled + IO_CHUNK], offset + filled)
            if count == 0:
                break
            filled += count
        return bytes(buffer[:filled])

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# reads and writes go in pieces of this size (a progress bar moves, memory stays flat)
IO_CHUNK = 64 * 1024 * 1024


class StepWriter:
    """A step being written: data files first, :meth:`commit` with the manifest last.

    ``location`` is where the files go until the commit (a temporary directory on
    local disk; the final prefix on an object store, invisible without a manifest).
    """

    location: str
    final: str

    def write_file(self, name: str, size: int, chunks: list[tuple[int, Any]],
                   progress: bool | None = None) -> None:
        """Write file ``name`` of ``size`` bytes from ``(offset, buffer)`` chunks, durably."""
        raise NotImplementedError

    def commit(self, manifest: bytes) -> None:
        """Write the manifest and make the step visible at ``final``, atomically."""
        raise NotImplementedError

    def abort(self) -> None:
        """Remove whatever this writer wrote (the step never became visible)."""
        raise NotImplementedError


class Store:
    """One storage backend (see the module docstring)."""

    #: whether the manager may keep a per-manifest cache keyed by :meth:`signature`
    local: bool = True
    #: the name, under a root, of the object writers serialize on (held while they write)
    lock_name: str = ""

    def step_dirs(self, root: str) -> dict[int, str]:
        """``{step: location}`` of every ``step_<N>`` entry under ``root``, by step.

        ``FileNotFoundError`` when ``root`` does not exist.
        """
        raise NotImplementedError

    def committed(self, step_location: str) -> bool:
        """Whether a step is there: its directory (local), its manifest (object stores,
        where the manifest is the commit record and a prefix without one is a save in
        progress or a crashed writer's leftover)."""
        raise NotImplementedError

    def exists(self, location: str) -> bool:
        """Whether anything (file or directory/prefix) is at ``location``."""
        raise NotImplementedError

    def isdir(self, location: str) -> bool:
        """Whether ``location`` is a directory (a non-empty prefix on object stores)."""
        raise NotImplementedError

    def open(self, location: str) -> Reader:
        """A :class:`Reader` of the regular file at ``location``.

        ``FileNotFoundError`` when missing; ``CorruptCheckpointError`` for what is
        not a regular file or cannot be opened.
        """
        raise NotImplementedError

    def signature(self, location: str) -> tuple | None:
        """What changes when the file at ``location`` is replaced; None if missing."""
        raise NotImplementedError

    def tree_size(self, location: str) -> int:
        """Bytes of every file under ``location``."""
        raise NotImplementedError

    def file_size(self, location: str) -> int:
        """Bytes of the file at ``location``; 0 when it is missing or unreadable."""
        try:
            with self.open(location) as reader:
                return reader.size
        except Exception:  # noqa: BLE001 - a size for display, never a reason to fail
            return 0

    def makedirs(self, root: str) -> None:
        """Create ``root`` (a writer's first save)."""
        raise NotImplementedError

    def writer_lock(self, root: str, timeout: float | None) -> contextlib.AbstractContextManager:
        """Hold ``root``'s writer lock; ``LockTimeoutError`` after ``timeout`` seconds."""
        raise NotImplementedError

    def remove_leftovers(self, root: str) -> list[str]:
        """Remove what crashed writers left under ``root`` (call under the lock)."""
        raise NotImplementedError

    def begin_step(self, root: str, name: str) -> StepWriter:
        """Start writing step directory ``name`` under ``root``."""
        raise NotImplementedError

    def attach_step(self, location: str, final: str) -> StepWriter:
        """A writer of more data files into a step another process began at ``location``
        (a rank of a distributed save). Its ``abort`` removes only its own files; the
        process that began the step commits it."""
        raise NotImplementedError

    def put_file(self, location: str, size: int, chunks: list[tuple[int, Any]],
                 progress: bool | None = None) -> None:
        """Write the file at ``location`` from ``(offset, buffer)`` chunks, durably,
        replacing what is there atomically: a reader sees the old file or the new."""
        raise NotImplementedError

    def remove_step(self, location: str) -> None:
        """Delete a committed step so that no reader lists it any more, then its files."""
        raise NotImplementedError

    def remove_steps(self, locations: Sequence[str]) -> None:
        """:meth:`remove_step` of each, in order (a backend may batch what they share)."""
        for location in locations:
            self.remove_step(location)

    def set_aside(self, location: str, new_name: str) -> str:
        """Move a step out of the step namespace (kept, never listed); the new location."""
        raise NotImplementedError


_LOCK = threading.Lock()
_STORES: dict[tuple, Store] = {}
_OPTIONS: dict[str, dict] = {}  # URL prefix -> storage_options given by the user


def open_store(location: str, storage_options: dict | None = None) -> Store:
    """The store for ``location``; ``storage_options`` (fsspec's) apply to every
    location under it for the rest of the process (readers opened later find them)."""
    if storage_options is not None:
        if not is_url(location):
            raise ValueError("storage_options are for URLs (s3://...), not local paths")
        with _LOCK:
            _OPTIONS[location.rstrip("/")] = dict(storage_options)
    return store_for(location)


def store_for(location: str) -> Store:
    """The :class:`Store` serving ``location`` (a path or a URL)."""
    location = str(location)
    if not is_url(location):
        from ckpt.storage.local import LOCAL

        return LOCAL
    protocol = location.split("://", 1)[0]
    options = _options_for(location)
    key = (protocol, tuple(sorted((k, repr(v)) for k, v in options.items())))
    with _LOCK:
        store = _STORES.get(key)
        if store is None:
            from ckpt.storage.remote import FsspecStore

            store = _STORES[key] = FsspecStore(protocol, options)
    return store


def _options_for(location: str) -> dict:
    with _LOCK:
        best = max((prefix for prefix in _OPTIONS
                    if location == prefix or location.startswith(prefix + "/")),
                   key=len, default=None)
        return dict(_OPTIONS[best]) if best is not None else {}
