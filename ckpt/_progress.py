"""tqdm progress for long saves and restores; silent unless a person is watching."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

__all__ = ["progress_bar"]

# tqdm's ``delay`` keeps the bar hidden until the operation has taken this long, so
# quick saves print nothing at all.
SHOW_AFTER_SECONDS = 1.0


def progress_bar(total_bytes: int, desc: str, enabled: bool | None) -> Any:
    """A byte-counting tqdm bar, shown only after ~1 s and only on a terminal.

    ``enabled=None`` means: on when stderr is a terminal; ``False`` always off.
    """
    if enabled is None:
        enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return tqdm(
        total=total_bytes,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        delay=SHOW_AFTER_SECONDS,
        disable=not enabled,
        leave=False,
    )
