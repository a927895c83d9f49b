"""Protocols and aliases shared by every layer."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["KeyPath", "Stateful", "is_stateful"]

KeyPath = tuple[str | int, ...]


@runtime_checkable
class Stateful(Protocol):
    """The PyTorch convention: an object that can export and import its state."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> Any: ...


def is_stateful(value: Any) -> bool:
    """True for objects with callable ``state_dict`` and ``load_state_dict``."""
    if isinstance(value, type):  # a class has the methods too, unbound
        return False
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    )
