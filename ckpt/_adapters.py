"""Framework adapters, found by the package a value's class comes from, imported lazily.

Core modules never import a framework. When :mod:`ckpt.tree` or
:mod:`ckpt.template` meets a value of a type they do not know, they ask this
registry: a class (or one of its bases) defined in ``keras``, ``jax``, ``jaxlib``,
``flax`` or ``optax`` is handed to that framework's module in
:mod:`ckpt.integrations`, imported only then (the framework itself is imported
already: one of its objects exists). Leaves an adapter encoded are decoded by the
module registered for their kind.

An integration module offers any of these functions (each may return None for
"not mine"):

* ``stored_form(value)``: what to store instead of ``value``: an object with
  ``state_dict``/``load_state_dict`` (a ``keras.Model``), a plain container (an
  optax NamedTuple becomes a tuple), or None to treat it as a leaf;
* ``stateful_view(value)``: for restore into a template, an object with
  ``state_dict``/``load_state_dict`` standing for ``value``;
* ``encode_leaf(value, key)`` -> ``(kind, array, extra)``; ``decode_leaf(kind,
  array, extra, device)``; ``array_adapter(value)`` -> an object with
  ``mismatch(template, restored)`` and ``copy_into(template, restored)``.

(PyTorch predates this registry and is still dispatched directly.)
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["ADAPTER_KINDS", "adapter_for", "adapter_for_kind", "stored_form",
           "stateful_view", "encode_leaf", "array_adapter"]

_BY_PACKAGE = {
    "keras": "ckpt.integrations.keras",
    "jax": "ckpt.integrations.jax",
    "jaxlib": "ckpt.integrations.jax",
    "flax": "ckpt.integrations.jax",
    "optax": "ckpt.integrations.jax",
}
# leaf kinds written by an adapter, and the module that decodes them
_BY_KIND = {"jax": "ckpt.integrations.jax"}
ADAPTER_KINDS = frozenset(_BY_KIND)
# types every state is full of: answered without walking their bases
_NEVER = frozenset({"builtins", "numpy", "collections", "torch"})


def adapter_for(value: Any) -> ModuleType | None:
    """The integration module for ``value``'s framework, or None."""
    cls = type(value)
    if cls.__module__.partition(".")[0] in _NEVER:
        return None
    for base in cls.__mro__:
        name = _BY_PACKAGE.get(base.__module__.partition(".")[0])
        if name is not None:
            return importlib.import_module(name)
    return None


def adapter_for_kind(kind: str) -> ModuleType:
    """The integration module that decodes leaves of ``kind`` (one of ADAPTER_KINDS)."""
    return importlib.import_module(_BY_KIND[kind])


def _call(value: Any, function: str, *args: Any) -> Any:
    adapter = adapter_for(value)
    hook = getattr(adapter, function, None) if adapter is not None else None
    return hook(value, *args) if hook is not None else None


def stored_form(value: Any) -> Any:
    """What to store for a framework object (see module docstring), or None."""
    return _call(value, "stored_form")


def stateful_view(value: Any) -> Any:
    """A ``state_dict``/``load_state_dict`` stand-in for a framework object, or None."""
    return _call(value, "stateful_view")


def encode_leaf(value: Any, key: str) -> tuple[str, Any, dict] | None:
    """``(kind, array, extra)`` for a framework array leaf, or None."""
    return _call(value, "encode_leaf", key)


def array_adapter(value: Any) -> Any:
    """An object with ``mismatch``/``copy_into`` for a framework array template, or None."""
    return _call(value, "array_adapter")
