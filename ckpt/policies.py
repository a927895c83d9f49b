"""Retention policies and the save schedule: pure decisions over step infos.

A policy answers one question: given every committed checkpoint (read from the
manifests on disk), which steps does it keep? Because the answer depends only on
what is on disk, it is the same after a restart: the best stays best and a time
window is not reset. Policies combine with ``|``: a step is kept if any keeps it.
"""

from __future__ import annotations

import math
import numbers
import re
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
    "decides_by_step",
    "is_due",
    "check_schedule",
    "metric_direction",
    "rankable",
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

    Clock skew: a checkpoint stamped *earlier* than the previous kept one (the clock
    went back, or the earlier one came from a node whose clock ran ahead) starts a
    new window and is kept. Otherwise one step stamped in the future would stop the
    policy until the clock caught up; this way skew costs at most one extra kept
    checkpoint per backward jump.
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
            elapsed = info.time - last
            if elapsed >= self.seconds or elapsed < 0:
                kept.add(info.step)
                last = info.time
        return kept


class KeepBest(Policy):
    """Keep the ``n`` checkpoints with the best value of ``metric``.

    ``mode="auto"`` (the default) infers the direction from the metric's name, as
    Keras' ``mode="auto"`` does: names with ``acc``, ``accuracy``, ``auc``, ``f1``,
    ``precision``, ``recall``, ... are maximized, names with ``loss``, ``error``,
    ``mse``, ... are minimized (:func:`metric_direction`), and a name that says
    neither is refused, so that the worst checkpoint is never kept silently.

    Only finite numbers rank (:func:`rankable`): steps without the metric, or whose
    value is NaN, infinite, a string or an int beyond float range, are never among
    the best. Ties go to the older step, so the answer is stable.
    """

    def __init__(self, metric: str, n: int = 1, mode: str = "auto") -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"KeepBest mode must be 'auto', 'min' or 'max', got {mode!r}")
        if type(n) is not int or n < 1:
            raise ValueError(f"KeepBest needs an int n >= 1, got {n!r}")
        if mode == "auto":
            mode = metric_direction(metric)
            if mode is None:
                raise ValueError(
                    f"KeepBest cannot tell from the name {metric!r} whether higher or lower "
                    "is better: pass mode='min' or mode='max'")
        self.metric = metric
        self.n = n
        self.mode = mode  # always 'min' or 'max' from here on (stored in manifests)

    def ranked(self, infos: Iterable[StepInfo]) -> list[StepInfo]:
        """Steps whose metric is a finite number, best first."""
        scored = [(rankable(i.metrics.get(self.metric)), i) for i in infos]
        sign = 1.0 if self.mode == "min" else -1.0
        ranked = sorted(((sign * value, i.step), i) for value, i in scored if value is not None)
        return [info for _, info in ranked]

    def keep(self, infos: Sequence[StepInfo]) -> set[int]:
        return {info.step for info in self.ranked(infos)[: self.n]}


def rankable(value: Any) -> float | None:
    """``value`` as a float if it can rank a checkpoint, else None.

    Bools, strings, NaN, infinities and ints beyond float range (``10**400`` in a
    manifest written by hand or by an older version) do not rank; they must not
    crash retention either.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


# Keras' mode="auto" knows "acc", "auc" and "loss"; these are the usual metric names
# of Keras, torchmetrics, HF evaluate and scikit-learn, matched as whole words.
_HIGHER_IS_BETTER = frozenset({
    "acc", "accuracy", "auc", "auroc", "aupr", "ap", "map", "f1", "fbeta", "fmeasure",
    "precision", "recall", "sensitivity", "specificity", "iou", "miou", "jaccard", "dice",
    "bleu", "rouge", "meteor", "chrf", "r2", "ndcg", "mrr", "hits", "reward", "return",
    "psnr", "ssim", "correlation", "spearman", "pearson", "kappa"})
_LOWER_IS_BETTER = frozenset({
    "loss", "error", "err", "mse", "mae", "rmse", "mape", "msle", "nll", "perplexity",
    "ppl", "wer", "cer", "crossentropy", "kld", "kl", "divergence", "hinge", "huber",
    "logcosh", "cost", "regret", "fid", "eer", "fpr", "fnr"})


def metric_direction(metric: str) -> str | None:
    """``"max"``, ``"min"`` or None: which way a metric named ``metric`` improves.

    The name is split into words (``val_top1_accuracy``, ``valAccuracy``,
    ``eval/f1``); it is ``"max"`` if a word is a known higher-is-better metric and no
    word a lower-is-better one, ``"min"`` the other way round, None otherwise
    (unknown, or both as in ``accuracy_loss``).
    """
    words = set(re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", metric).lower()))
    higher, lower = bool(words & _HIGHER_IS_BETTER), bool(words & _LOWER_IS_BETTER)
    if higher != lower:
        return "max" if higher else "min"
    return None


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


def decides_by_step(policy: Policy) -> bool:
    """Whether ``policy.keep`` looks at step numbers only, and a step it does not
    keep never changes what it keeps.

    True for ``KeepLast``, ``KeepEvery(steps=)``, ``KeepAll`` and unions of them
    (not subclasses, which may decide otherwise). Pruning under such a policy needs
    no metrics or times, so it reads only the manifests of the steps it keeps or
    deletes, not of every step in the directory (issue 15).
    """
    if type(policy) is AnyOf:
        return all(decides_by_step(part) for part in policy.policies)
    if type(policy) is KeepEvery:
        return policy.steps is not None
    return type(policy) in (KeepLast, KeepAll)


def is_due(step: int, now: float, last_save_time: float | None, *,
           every: int | None, every_seconds: float | None) -> bool:
    """Whether the schedule asks for a save at ``step``.

    With neither schedule every step is due; with both, either one suffices.
    ``now`` and ``last_save_time`` must come from the same clock (the manager uses
    ``time.monotonic``, so a wall clock that jumps does not move the schedule).
    """
    if every is None and every_seconds is None:
        return True
    if every is not None and step % every == 0:
        return True
    if every_seconds is not None:
        return last_save_time is None or now - last_save_time >= every_seconds
    return False


def check_schedule(every: Any, every_seconds: Any) -> tuple[int | None, float | None]:
    """``(every, every_seconds)`` checked and normalized; ValueError naming the bad one.

    ``every`` is a step count: an int >= 1 (numpy integers too; not a bool or a
    float, which would silently save never or at odd steps). ``every_seconds`` is a
    real number > 0 and finite (not a bool, NaN or negative).
    """
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"save_every must be an int >= 1 (a number of steps), "
                             f"got {every!r}")
        every = int(every)
    if every_seconds is not None:
        if (isinstance(every_seconds, bool) or not isinstance(every_seconds, numbers.Real)
                or not math.isfinite(every_seconds) or every_seconds <= 0):
            raise ValueError(f"save_every_seconds must be a finite number of seconds > 0, "
                             f"got {every_seconds!r}")
        every_seconds = float(every_seconds)
    return every, every_seconds


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
