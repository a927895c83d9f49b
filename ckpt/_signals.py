"""Preemption signals as a flag: SIGTERM/SIGINT ask a training loop to save and stop.

Shared by :class:`ckpt.TrainingLoop` and the Keras ``BackupAndRestore`` callback
(and any loop that owns the training: Lightning's next). The handler only records
the signal, because saving inside a signal handler could interrupt a save.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

__all__ = ["StopFlag", "STOP_SIGNALS"]

log = logging.getLogger("ckpt")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Installs handlers for :data:`STOP_SIGNALS` and remembers the first one received.

    ``when`` words the log line ("at the end of this step", "after this batch").
    Handlers are installed only from the main thread (Python allows no other).
    """

    def __init__(self, when: str) -> None:
        self.when = when
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle the stop signals until :meth:`restore` (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signal = signum
        log.warning("received signal %d: saving %s, then stopping", signum, self.when)
