"""Named failpoints for crash and error-injection tests.

A test arms one point in a child process through the environment:
``CKPT_FAILPOINT=name:mode`` where mode is ``kill`` (SIGKILL at that point),
``eio`` (raise ``OSError(EIO)`` there) or ``enospc``. Optional ``@N`` after the
name fires on the N-th hit only (1-based). Unarmed, :func:`hit` costs a dict lookup.

:data:`POINTS` are the points of the local backend's commit protocol and pruning;
:data:`REMOTE_POINTS` those of the object-store backend (:mod:`ckpt.storage.remote`),
which shares the names whose meaning carries over (``data.before_write``: the data
file's upload is about to start) and adds its own for what has no local twin (a
multipart part stored, the manifest created, a pruned step's manifest removed).
"""

from __future__ import annotations

import errno
import os
import signal
import threading

__all__ = ["hit", "POINTS", "REMOTE_POINTS", "INCREMENTAL_POINTS"]

# Every point the commit protocol and pruning pass through, in order.
POINTS = (
    "lock.acquired",
    "tmpdir.created",
    "data.before_write",
    "data.after_write",
    "data.after_fsync",
    "manifest.before_write",
    "manifest.after_fsync",
    "tmpdir.after_fsync",
    "commit.before_rename",
    "commit.after_rename",
    "commit.after_dir_fsync",
    "prune.before_trash_rename",
    "prune.after_trash_rename",
    "prune.after_dir_fsync",
    "delete.before",
    "delete.after",
    "listing.removed",        # the listing cache is gone, no step removed yet (pruning)
    "listing.written",        # its replacement is written under a temporary name
    "listing.after_rename",   # and renamed over: the cache is current
)

# Hit only by incremental saves (after tmpdir.created, before data.before_write).
INCREMENTAL_POINTS = (
    "incremental.linked",     # the earlier steps' files are hard-linked into the tmp dir
)

# The object-store commit (no rename: the manifest, created last, commits) and pruning.
REMOTE_POINTS = (
    "lock.acquired",
    "data.before_write",             # state.h5's upload is about to start
    "data.part_written",             # one part of a multipart upload is stored (per part)
    "data.after_write",              # state.h5 is a complete object; no manifest yet
    "manifest.before_write",         # the manifest's conditional create is next
    "commit.after_manifest",         # the manifest exists: the step is committed
    "prune.after_manifest_removed",  # a pruned step is unlisted; its data is still there
)


def _parse(spec: str) -> tuple[str, str, int]:
    name, _, mode = spec.partition(":")
    nth = 0
    if "@" in name:
        name, _, count = name.partition("@")
        nth = int(count)
    return name, mode or "kill", nth


_ARMED = _parse(os.environ["CKPT_FAILPOINT"]) if os.environ.get("CKPT_FAILPOINT") else None
_hits: dict[str, int] = {}
_hits_lock = threading.Lock()  # parts of an upload pass their point from several threads


def hit(name: str) -> None:
    """Pass failpoint ``name``: kill or raise here if a test armed it."""
    if _ARMED is None or _ARMED[0] != name:
        return
    with _hits_lock:
        _hits[name] = count = _hits.get(name, 0) + 1
    if _ARMED[2] and count != _ARMED[2]:
        return
    mode = _ARMED[1]
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = errno.ENOSPC if mode == "enospc" else errno.EIO
    raise OSError(code, f"{os.strerror(code)} (failpoint {name})")
