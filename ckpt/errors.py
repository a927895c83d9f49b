"""Exceptions raised by ckpt.

Every error subclasses :class:`CheckpointError` and, where one fits, the matching
built-in, so ``except FileNotFoundError`` keeps working for callers who do not know
about ckpt. Each keeps what it names as attributes and survives pickling (errors
cross process boundaries in multi-process tests and in the async writer).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "StateMismatchError",
    "UnsupportedTypeError",
    "StepExistsError",
    "LockTimeoutError",
    "SaveError",
    "CheckpointPermissionError",
    "Mismatch",
]


class CheckpointError(Exception):
    """Base class of every error ckpt raises on purpose."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint, step or file that was asked for does not exist."""

    def __init__(self, path: str, step: int | None = None, detail: str = "") -> None:
        self.path = str(path)
        self.step = step
        self.detail = detail
        what = f"step {step} " if step is not None else ""
        msg = f"checkpoint {what}not found: {self.path}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)

    def __reduce__(self):  # keep the attributes when pickled
        return (type(self), (self.path, self.step, self.detail))

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint failed a checksum or format check; names the file and the key."""

    def __init__(
        self, path: str, reason: str, key: str | None = None, step: int | None = None
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.key = key
        self.step = step
        where = f" at key {key}" if key is not None else ""
        what = f"step {step}: " if step is not None else ""
        super().__init__(f"corrupt checkpoint {what}{self.path}{where}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.key, self.step))

    def for_step(self, step: int) -> CorruptCheckpointError:
        """This error, saying which step the damaged file belongs to."""
        if self.step is not None:
            return self
        return CorruptCheckpointError(self.path, self.reason, self.key, step)


class Mismatch(tuple):
    """One difference between a checkpoint and a template: (key, kind, expected, found)."""

    __slots__ = ()

    def __new__(cls, key: str, kind: str, expected: str, found: str) -> Mismatch:
        return super().__new__(cls, (key, kind, expected, found))

    key = property(lambda self: self[0])
    kind = property(lambda self: self[1])
    expected = property(lambda self: self[2])
    found = property(lambda self: self[3])

    def __str__(self) -> str:
        return f"{self.key}: {self.kind} (expected {self.expected}, found {self.found})"


class StateMismatchError(CheckpointError, ValueError):
    """The checkpoint does not fit the template; lists every difference at once."""

    def __init__(self, path: str, mismatches: Sequence[tuple[str, str, str, str]],
                 hint: str = "") -> None:
        self.path = str(path)
        self.mismatches = [Mismatch(*m) for m in mismatches]
        self.hint = hint
        lines = "\n".join(f"  {m}" for m in self.mismatches)
        n = len(self.mismatches)
        msg = (f"checkpoint {self.path} does not match the template ({n} difference"
               f"{'s' if n != 1 else ''}):\n{lines}")
        if hint:
            msg += f"\nhint: {hint}"
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (self.path, [tuple(m) for m in self.mismatches], self.hint))


class UnsupportedTypeError(CheckpointError, TypeError):
    """A value in the state cannot be stored; names its key path and type."""

    def __init__(self, key: str, type_name: str, detail: str = "") -> None:
        self.key = key
        self.type_name = type_name
        self.detail = detail
        msg = f"cannot store value of type {type_name} at key {key}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (self.key, self.type_name, self.detail))


class StepExistsError(CheckpointError, FileExistsError):
    """A checkpoint for this step is already in the directory."""

    def __init__(self, path: str, step: int) -> None:
        self.path = str(path)
        self.step = step
        super().__init__(
            f"step {step} already exists: {self.path} "
            f"(delete it first with CheckpointManager.delete({step}))"
        )

    def __reduce__(self):
        return (type(self), (self.path, self.step))

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class LockTimeoutError(CheckpointError, TimeoutError):
    """Another writer held the directory's lock for longer than the timeout."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = str(path)
        self.timeout = timeout
        super().__init__(
            f"could not take the writer lock {self.path} within {timeout:g} s "
            "(another process is saving into this directory)"
        )

    def __reduce__(self):
        return (type(self), (self.path, self.timeout))


class SaveError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, I/O error, permissions).

    Keeps the cause's ``errno`` (``ENOSPC`` for a full disk) so callers can test it;
    nothing of the failed save is left visible and older checkpoints are intact.
    """

    def __init__(self, path: str, step: int | None, errno_: int | None, reason: str) -> None:
        self.step = step
        self.reason = reason
        what = f"step {step}" if step is not None else "checkpoint"
        super().__init__(errno_, f"could not save {what}: {reason}", str(path))

    @classmethod
    def from_os_error(cls, path: str, step: int | None, error: OSError) -> SaveError:
        """Wrap ``error``, saying plainly when the disk is full."""
        import errno

        reason = error.strerror or str(error)
        if error.errno == errno.ENOSPC:
            reason += " (the disk is full)"
        elif error.errno == errno.EFBIG:
            reason += " (the file size limit was reached)"
        return cls(path, step, error.errno, reason)

    def __reduce__(self):
        return (type(self), (self.filename, self.step, self.errno, self.reason))


class CheckpointPermissionError(CheckpointError, PermissionError):
    """This process may not read or change a checkpoint directory or a file in it.

    Names what was being done and the path that refused it; keeps the cause's
    ``errno`` (``EACCES`` or ``EPERM``) and ``filename``.
    """

    def __init__(self, path: str, action: str, errno_: int | None = None,
                 reason: str = "permission denied") -> None:
        import errno

        self.action = action
        self.reason = reason
        super().__init__(errno.EACCES if errno_ is None else errno_,
                         f"cannot {action}: {path}: {reason}", str(path))

    @classmethod
    def from_os_error(cls, path: str, action: str, error: OSError) -> CheckpointPermissionError:
        """Wrap ``error``; ``path`` is used when the error names no file."""
        return cls(error.filename or path, action, error.errno,
                   (error.strerror or "permission denied").lower())

    def __str__(self) -> str:
        return self.strerror or ""

    def __reduce__(self):
        return (type(self), (self.filename, self.action, self.errno, self.reason))
