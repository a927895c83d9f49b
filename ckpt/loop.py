"""``TrainingLoop``: resume-or-start, save on schedule, stop cleanly on preemption.

::

    with ckpt.TrainingLoop(mgr, state, total_steps=1000) as loop:
        for step in loop:                 # starts after the latest checkpoint
            loss = train_step(...)
            loop.report(loss=loss)        # metrics stored with this step's save

Step numbers follow the convention of the TF checkpoint guide, the HF Trainer and
Lightning: step ``N`` is the ``N``-th update, steps run ``1 .. total_steps``, and the
checkpoint of step ``N`` holds the state after ``N`` completed updates, so a resumed
loop starts at ``N + 1``. SIGTERM or SIGINT during the loop sets a flag: the step
in progress finishes, is saved, and the loop ends (``loop.preempted`` is True).
The last step is always saved. Under ``torchrun`` (a distributed manager) a signal
on any rank stops every rank after the same step, and that step is saved by all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ckpt._signals import StopFlag
from ckpt.manager import CheckpointManager

__all__ = ["TrainingLoop"]

log = logging.getLogger("ckpt")


class TrainingLoop:
    """Wrap a training loop around ``manager`` and ``state`` (see module docstring).

    Args:
        manager: where checkpoints go; its ``save_every``/``keep`` apply.
        state: the tree to save and to restore into (arrays filled in place,
            stateful objects loaded).
        total_steps: updates of the whole run; the loop yields ``start_step ..
            total_steps`` (``1 .. total_steps`` on a fresh run).
        handle_signals: catch SIGTERM/SIGINT (main thread only) to save and stop.
    """

    def __init__(self, manager: CheckpointManager, state: Any, *, total_steps: int,
                 handle_signals: bool = True) -> None:
        if type(total_steps) is not int or total_steps < 0:  # bool is an int: refused too
            raise ValueError(f"total_steps must be an int >= 0, got {total_steps!r}")
        self.manager = manager
        self.state = state
        self.total_steps = total_steps
        self.handle_signals = handle_signals
        self.preempted = False
        self.resumed_from: int | None = None  # the step a resumed run continued after
        self.last_saved: int | None = None
        self._metrics: dict[str, Any] = {}
        self._stop = StopFlag("at the end of this step")
        self.start_step = self._resume()

    def _resume(self) -> int:
        latest = self.manager.latest_step()
        if latest is None:
            return 1
        self.state = self.manager.restore(into=self.state)
        # restore() may fall back past a damaged newest step: ask which one it used
        self.resumed_from = self.manager.last_restored_step
        log.info("resumed from step %d", self.resumed_from)
        # The run redoes the steps after it; damaged checkpoints of those steps would
        # block their saves, so they are moved aside (kept, not deleted).
        if self.manager.coordinator:  # one rank of a distributed job moves them
            for step in self.manager.step_numbers():
                if step > self.resumed_from:
                    self.manager.set_aside(step)
        self.manager.barrier()
        return self.resumed_from + 1

    @property
    def stop_signal(self) -> int | None:
        """The signal (SIGTERM or SIGINT) that stopped the loop, or None.

        A program that stops on it should exit with ``128 + stop_signal`` (130 for
        Ctrl-C, 143 for SIGTERM), as the shell does, so that a job scheduler can tell
        a preempted run from a finished one.
        """
        return self._stop.signal if self.preempted else None

    @property
    def remaining(self) -> int:
        """How many steps are still to run."""
        return max(0, self.total_steps - self.start_step + 1)

    def report(self, **metrics: Any) -> None:
        """Metrics of the current step, stored with its checkpoint if it is saved."""
        self._metrics.update(metrics)

    def __enter__(self) -> TrainingLoop:
        if self.handle_signals:
            self._stop.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.restore()
        self.manager.wait_until_finished()

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.total_steps + 1):
            self._metrics = {}
            yield step
            last = step == self.total_steps
            # a signal on any rank of a distributed job stops every rank at this step
            stopping = self.manager._any_rank(self._stop.signal is not None)
            saved = self.manager.save(step, self.state, metrics=self._metrics,
                                      force=last or stopping)
            if saved:
                self.last_saved = step
            if stopping:
                self.preempted = True
                log.warning("preempted: saved step %d and stopped", step)
                return
