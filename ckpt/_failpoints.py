"""Named failpoints for crash and error-injection tests.

A test arms one point in a child process through the environment:
``CKPT_FAILPOINT=name:mode`` where mode is ``kill`` (SIGKILL at that point),
``eio`` (raise ``OSError(EIO)`` there) or ``enospc``. Optional ``@N`` after the
name fires on the N-th hit only (1-based). Unarmed, :func:`hit` costs a dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["hit", "POINTS"]

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


def hit(name: str) -> None:
    """Pass failpoint ``name``: kill or raise here if a test armed it."""
    if _ARMED is None or _ARMED[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _ARMED[2] and _hits[name] != _ARMED[2]:
        return
    mode = _ARMED[1]
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = errno.ENOSPC if mode == "enospc" else errno.EIO
    raise OSError(code, f"{os.strerror(code)} (failpoint {name})")
