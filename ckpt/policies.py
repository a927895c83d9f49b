"""Retention policies and the save schedule: pure decisions over step infos.

A policy answers one question: given every committed checkpoint (read from the
manifests on disk), which steps does it keep? Because the answer depends only on
what is on disk, it is the same after a restart: the best stays best and a time
window is not reset. Policies combine with ``|``: a step is kept if any keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "StepInfo",
    "Policy",
    "KeepLast",
    "KeepEvery",
    "KeepBest",
    "KeepAll",
    "AnyOf",
    "retained_steps",
    "is_due",
    "to_spec",
    "from_spec",
]


@dataclass(frozen=True)
class StepInfo:
    """What a manifest says about one committed checkpoint."""

    step: int
    time: float
    metrics: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    nbytes: int = 0
    metadata: Any = None


class Policy:
    """Base class: ``keep(infos)`` returns the set of steps to keep."""

    def keep(self, infos: Sequence[StepInfo]) -> set[int]:
        """The steps among ``infos`` (sorted by step) that this policy keeps."""
        raise NotImplementedError

    def __or__(self, other: Policy) -> AnyOf:
        return AnyOf(*_parts(self), *_parts(other))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({fields})"


def _parts(policy: Policy) -> tuple[Policy, ...]:
    if not isinstance(policy, Policy):
        raise TypeError(f"cannot combine a retention policy with {type(policy).__name__}")
    return policy.policies if isinstance(policy, AnyOf) else (policy,)


class KeepAll(Policy):
    """Keep every checkpoint (the default)."""

    def keep(self, infos: Sequence[StepInfo]) -> set[int]:
        return {info.step for info in infos}


class KeepLast(Policy):
    """Keep the ``n`` newest checkpoints."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"KeepLast needs n >= 1, got {n}")
        self.n = n

    def keep(self, infos: Sequence[StepInfo]) -> set[int]:
        return {info.step for info in sorted(infos, key=lambda i: i.step)[-self.n:]}


class KeepEvery(Policy):
    """Keep every ``steps``-th step, or one checkpoint per ``seconds`` of wall time.

    With ``seconds``, a checkpoint is kept when it was saved at least ``seconds``
    after the previous kept one (the first is always kept). Steps that were deleted
    were never kept by this rule, so deleting them does not change later answers.
    """

    def __init__(self, steps: int | None = None, *, seconds: float | None = None) -> None:
        if (steps is None) == (seconds is None):
            raise ValueError("KeepEvery takes exactly one of steps= or seconds=")
        if steps is not None and steps < 1:
            raise ValueError(f"KeepEvery needs steps >= 1, got {steps}")
        if seconds is not None and not seconds > 0:
            raise ValueError(f"KeepEvery needs seconds > 0, got {seconds}")
        self.steps = steps
        self.seconds = seconds

    def keep(self, infos: Sequence[StepInfo]) -> set[int]:
        if self.steps is not None:
            return {info.step for info in infos if info.step % self.steps == 0}
        kept, last = set(), -math.inf
        for info in sorted(infos, key=lambda i: i.step):
            if info.time - last >= self.seconds:
                kept.add(info.step)
                last = info.time
        return kept


class KeepBest(Policy):
    """Keep the ``n`` checkpoints with the best value of ``metric``.

    Steps without the metric, or with a value that is not a finite number, are
    never among the best. Ties go to the older step, so the answer is stable.
    """

    def __init__(self, metric: str, n: int = 1, mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"KeepBest mode must be 'min' or 'max', got {mode!r}")
        if n < 1:
            raise ValueError(f"KeepBest needs n >= 1, got {n}")
        self.metric = metric
        self.n = n
        self.mode = mode

    def ranked(self, infos: Iterable[StepInfo]) -> list[StepInfo]:
        """Steps that carry the metric, best first."""
        scored = [i for i in infos if _finite(i.metrics.get(self.metric))]
        sign = 1.0 if self.mode == "min" else -1.0
        return sorted(scored, key=lambda i: (sign * float(i.metrics[self.metric]), i.step))

    def keep(self, infos: Sequence[StepInfo]) -> set[int]:
        return {info.step for info in self.ranked(infos)[: self.n]}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class AnyOf(Policy):
    """Keep a step if any of the policies keeps it (what ``a | b`` builds)."""

    def __init__(self, *policies: Policy) -> None:
        self.policies = tuple(policies)

    def keep(self, infos: Sequence[StepInfo]) -> set[int]:
        kept: set[int] = set()
        for policy in self.policies:
            kept |= policy.keep(infos)
        return kept

    def __repr__(self) -> str:
        return " | ".join(repr(p) for p in self.policies)


def retained_steps(policy: Policy, infos: Sequence[StepInfo]) -> set[int]:
    """What survives pruning: the policy's choice plus, always, the newest step."""
    kept = policy.keep(infos)
    if infos:
        kept.add(max(info.step for info in infos))
    return kept


def is_due(step: int, now: float, last_save_time: float | None, *,
           every: int | None, every_seconds: float | None) -> bool:
    """Whether the schedule asks for a save at ``step``.

    With neither schedule every step is due; with both, either one suffices.
    """
    if every is None and every_seconds is None:
        return True
    if every is not None and step % every == 0:
        return True
    if every_seconds is not None:
        return last_save_time is None or now - last_save_time >= every_seconds
    return False


def to_spec(policy: Policy) -> list[dict[str, Any]]:
    """A JSON description of a policy (stored in each manifest, so that tools such
    as ``ckpt ls`` can say which policy keeps a step without being told)."""
    specs = []
    for part in _parts(policy):
        fields = {k: v for k, v in vars(part).items() if v is not None}
        specs.append({"policy": type(part).__name__, **fields})
    return specs


_BY_NAME = {cls.__name__: cls for cls in (KeepLast, KeepEvery, KeepBest, KeepAll)}


def from_spec(spec: Any) -> Policy | None:
    """The policy :func:`to_spec` described, or None if ``spec`` is not one."""
    try:
        parts = []
        for entry in spec:
            fields = dict(entry)
            cls = _BY_NAME[fields.pop("policy")]
            if cls is KeepEvery:
                parts.append(KeepEvery(fields.get("steps"), seconds=fields.get("seconds")))
            else:
                parts.append(cls(**fields))
    except (KeyError, TypeError, ValueError):
        return None
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AnyOf(*parts)
