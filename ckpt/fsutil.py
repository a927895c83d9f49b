"""Filesystem steps of the commit protocol: fsync, atomic replace, names, cleanup, lock.

Why fsync the directory too: a rename is only durable once the directory entry that
records it reaches the disk, so every commit ends with an fsync of the parent.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import filelock

from ckpt import _failpoints
from ckpt.errors import LockTimeoutError

__all__ = [
    "fsync_dir",
    "write_file_atomic",
    "tmp_name",
    "trash_name",
    "aside_name",
    "remove_leftovers",
    "mark_unclean",
    "remove_dir",
    "writer_lock",
    "LOCK_NAME",
    "STEP_PREFIX",
    "step_dir_name",
    "parse_step_dir",
    "step_dirs",
    "RESCANS",
]

log = logging.getLogger("ckpt")

LOCK_NAME = ".ckpt.lock"

# How often a reader lists the directory again after a step vanished under it. Each
# rescan follows a prune, which follows a newer commit, so one is nearly always
# enough; the bound only stops a reader from spinning if something else deletes.
RESCANS = 100
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
# the names parse_step_dir accepts, each between NULs or the ends of a string
_STEP_NAMES = re.compile(rf"(?:^|\0)({STEP_PREFIX}\d+)(?=\0|\Z)")
_DIGITS = operator.itemgetter(slice(len(STEP_PREFIX), None))


def step_dir_name(step: int) -> str:
    """``step_<N>``; N sorts as an integer because callers parse it back."""
    return f"{STEP_PREFIX}{step}"


def parse_step_dir(name: str) -> int | None:
    """The step of a ``step_<N>`` name, or None for any other name."""
    # not a regular expression: this runs once per entry of every listing (issue 15)
    digits = name[len(STEP_PREFIX):] if name.startswith(STEP_PREFIX) else ""
    return int(digits) if digits.isdecimal() else None


def step_names(directory: str | os.PathLike[str] | int) -> dict[int, str]:
    """``{step: name}`` of every ``step_<N>`` directory in ``directory`` (a path or a
    descriptor), valid or not, in no order."""
    with os.scandir(directory) as entries:
        names = "\0".join([entry.name for entry in entries
                            if entry.is_dir(follow_symlinks=False)])
    # one regular-expression pass over the names (no name holds a NUL), then loops
    # that run in C: listing 10,000 steps, 12 -> 7 ms (issue 15)
    found = _STEP_NAMES.findall(names)
    return dict(zip(map(int, map(_DIGITS, found)), found))


def in_step_order(names: dict[int, str], prefix: str = "") -> dict[int, str]:
    """``{step: prefix + name}`` sorted by step."""
    steps = sorted(names)
    return dict(zip(steps, map(prefix.__add__, map(names.__getitem__, steps))))


def step_dirs(directory: str | os.PathLike[str] | int) -> dict[int, str]:
    """``{step: path}`` of every ``step_<N>`` directory, valid or not, sorted by step.

    ``directory`` may be a descriptor of it; the paths are then its entries' names.
    """
    prefix = "" if isinstance(directory, int) else os.path.join(os.fspath(directory), "")
    return in_step_order(step_names(directory), prefix)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames and creations inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unique() -> str:
    # pid and host make leftovers traceable; the uuid makes the name unique
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def tmp_name(final_name: str) -> str:
    """A hidden sibling name for a save in progress of ``final_name``."""
    return f"{TMP_PREFIX}{final_name}-{_unique()}"


def trash_name(final_name: str) -> str:
    """A hidden sibling name for a checkpoint being deleted."""
    return f"{TRASH_PREFIX}{final_name}-{_unique()}"


def aside_name(final_name: str) -> str:
    """A visible, never-listed name for a damaged checkpoint kept for inspection."""
    return f"damaged-{final_name}-{_unique()}"


def write_file_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsync'd sibling temp file and a rename."""
    path = Path(path)
    tmp = path.with_name(tmp_name(path.name))
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_dir(path: str | os.PathLike[str]) -> None:
    """Delete a directory tree; a tree that is already gone is fine."""
    _failpoints.hit("delete.before")
    shutil.rmtree(path, ignore_errors=False, onerror=_ignore_missing)
    _failpoints.hit("delete.after")


def _ignore_missing(func, path, exc_info) -> None:  # noqa: ANN001 - shutil's signature
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


# The writer's scan for leftovers lists the whole directory, 5 ms next to 10,000
# steps. It is skipped while the directory is as the last writer left it: each
# writer that ends its locked work normally, knowing the directory clean, records
# the directory's inode, mtime, ctime and link count in CLEAN_NAME (written in place, so
# writing it does not change them). Any entry made or removed since (a writer that
# died: its .tmp- directory, its .trash- rename) changes them; kernels since 6.6 give
# a change after a stat a finer timestamp than the stat saw. A full scan still runs
# every FULL_SCAN_EVERY writes, which bounds what a coarse clock could hide.
CLEAN_NAME = ".ckpt-clean"
FULL_SCAN_EVERY = 64
_held: dict[tuple[str, int], dict] = {}  # (directory, thread) -> what its writer knows


def _stamp(directory: str) -> tuple[int, int, int, int]:
    info = os.stat(directory)
    return info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_nlink


def _read_clean_mark(directory: str) -> dict:
    """``{"clean": whether the directory is as recorded, "count": writes since a scan}``."""
    try:
        with open(os.path.join(directory, CLEAN_NAME), "rb") as handle:
            fields = handle.read(200).split()
        *stamp, count = (int(field) for field in fields)
    except (OSError, ValueError):
        return {"clean": False, "count": 0}
    return {"clean": tuple(stamp) == _stamp(directory), "count": count}


def _write_clean_mark(directory: str, count: int) -> None:
    fd = os.open(os.path.join(directory, CLEAN_NAME), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        stamp = _stamp(directory)  # after the create: it changes them
        data = (" ".join(str(field) for field in (*stamp, count)) + "\n").encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _leftover_names(directory: str) -> list[str]:
    """The temporary and trash names in ``directory``: only a writer creates them."""
    # names only, filtered in one C-level pass: 16 ms with a DirEntry per entry next
    # to 10,000 steps, 5 ms so
    prefixes = (TMP_PREFIX, TRASH_PREFIX)
    return [name for name in os.listdir(directory) if name.startswith(prefixes)]


def mark_unclean(directory: str | os.PathLike[str]) -> None:
    """Under the writer lock, after an error it goes on from: the directory may hold
    leftovers now, so the next writer scans for them."""
    known = _held.get((os.fspath(directory), threading.get_ident()))
    if known is not None:
        known["clean"] = False


def remove_leftovers(directory: str | os.PathLike[str]) -> list[str]:
    """Remove temporary and trash entries of crashed writers in ``directory``.

    Only call this while holding the writer lock: every live writer holds it for
    the whole of its save, so anything left over now belongs to a dead one.
    Skipped while the directory is as the last writer left it (``CLEAN_NAME``).
    """
    directory = os.fspath(directory)
    known = _held.get((directory, threading.get_ident()))
    if known is not None:
        if known["clean"] and known["count"] < FULL_SCAN_EVERY:
            return []
        known.update(clean=True, count=0)  # once the scan below has run
    removed = []
    for name in _leftover_names(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            remove_dir(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        removed.append(name)
    if removed:
        log.info("removed leftovers of an interrupted writer in %s: %s", directory, removed)
    return removed


@contextlib.contextmanager
def writer_lock(directory: str | os.PathLike[str], timeout: float | None) -> Iterator[None]:
    """Hold the directory's writer lock; ``timeout=None`` waits for ever."""
    lock_path = os.path.join(directory, LOCK_NAME)
    lock = filelock.FileLock(lock_path, timeout=-1 if timeout is None else timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeoutError(lock_path, timeout if timeout is not None else -1) from None
    key = (os.fspath(directory), threading.get_ident())
    try:
        _held[key] = known = _read_clean_mark(key[0])
        yield
        # only a writer that finished its work knows what it left: after an error
        # the directory no longer matches the mark, and the next writer scans
        if known["clean"]:
            with contextlib.suppress(OSError):
                _write_clean_mark(key[0], known["count"] + 1)
    finally:
        _held.pop(key, None)
        lock.release()
