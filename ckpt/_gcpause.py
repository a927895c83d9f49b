"""Pausing Python's cyclic garbage collector while ckpt builds many small objects.

Flattening a state of 100,000 leaves and planning its index create a few hundred
thousand tuples, lists and dicts, none of them in a cycle; each young-generation
collection they trigger also walks every object still alive, so the collector took
half of that time (0.37 s of 0.53 s for the index plan alone, issue 15). Reference
counting frees all of it as usual while the collector is paused.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_paused"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block; re-enable it only if it was on.

    Safe with threads: a block that found it off (another thread's pause, or the
    user's choice) never turns it on, and the last block that found it on does.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
