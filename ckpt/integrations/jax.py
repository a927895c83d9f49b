"""JAX arrays, optax states and flax NNX state as ckpt leaves and containers.

Loaded by :mod:`ckpt._adapters` when a value from ``jax``, ``jaxlib``, ``flax`` or
``optax`` is first seen.

What is stored
--------------
* A ``jax.Array`` is fetched to the host and stored as its values (leaf kind
  ``"jax"``). dtypes numpy lacks (bfloat16, the float8 and int4 formats) are stored
  as the unsigned integer of the same width with the dtype's name in the leaf's
  ``extra``, so their bits come back exactly; typed PRNG keys
  (``jax.random.key``) are stored as their key data with the implementation's name.
* NamedTuples defined by jax, optax or flax (``optax.ScaleByAdamState``,
  ``optax.EmptyState``) are stored as tuples of their fields.
* ``nnx.State`` (``nnx.state(model)``) and an ``nnx.Module`` are stored as the
  state's pure dict (``nnx.to_pure_dict(state)``): nested dicts of arrays.
* A ``flax.struct`` dataclass flax serializes (linen's ``TrainState`` and its
  subclasses) is stored as ``flax.serialization.to_state_dict(value)``: ``step``,
  ``params``, ``opt_state``; its static fields (``apply_fn``, ``tx``) are code and
  come from the template on ``restore(into=)``, which returns a new instance.

What comes back
---------------
A plain restore gives numpy arrays (bfloat16 as ``ml_dtypes.bfloat16``, PRNG keys as
their uint32 key data) in plain dicts and tuples, and needs neither jax nor flax.
``restore(into=pytree)`` gives back the template's structure (its NamedTuples
included) with ``jax.Array`` leaves placed like the template's (same sharding),
PRNG keys as keys; an ``nnx.State`` or ``nnx.Module`` template is updated in place.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from ckpt.template import describe
from ckpt.tree import is_ml_dtype

__all__ = ["KIND", "stored_form", "stateful_view", "encode_leaf", "encode_host_array",
           "decode_leaf", "array_adapter", "mismatch", "copy_into"]

KIND = "jax"
_UINT_OF_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# the NamedTuples stored as tuples: those of the frameworks this module serves
_TUPLE_PACKAGES = ("jax", "jaxlib", "optax", "flax", "chex")

# jax itself is imported inside the functions that need it: a process that only
# reads a checkpoint JAX wrote (a plain restore, ``ckpt show``) does not need JAX.


def _jax() -> Any:
    import jax

    return jax


def _is_array(value: Any) -> bool:
    return isinstance(value, _jax().Array)


# ---------------------------------------------------------------- saving


def stored_form(value: Any) -> Any:
    """A tuple for a framework NamedTuple, a pure dict for NNX state, else None."""
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        if type(value).__module__.partition(".")[0] in _TUPLE_PACKAGES:
            return tuple(value)
        return None
    state = _nnx_state(value)
    if state is not None:
        return sys.modules["flax.nnx"].to_pure_dict(state)
    if _is_flax_struct(value):
        return sys.modules["flax.serialization"].to_state_dict(value)
    return None


def _is_flax_struct(value: Any) -> bool:
    """A ``flax.struct`` dataclass flax can serialize (a linen ``TrainState``)."""
    serialization = sys.modules.get("flax.serialization")
    return (serialization is not None and dataclasses.is_dataclass(value)
            and not isinstance(value, type)
            and type(value) in serialization._STATE_DICT_REGISTRY)


def _nnx_state(value: Any) -> Any:
    """``value`` as an ``nnx.State`` (a Module's state), or None when it is neither."""
    nnx = sys.modules.get("flax.nnx")  # an NNX object exists only if flax.nnx was imported
    if nnx is None:
        return None
    if isinstance(value, nnx.State):
        return value
    if isinstance(value, nnx.Module):
        return nnx.state(value)
    return None


def encode_leaf(value: Any, key: str) -> tuple[str, np.ndarray, dict] | None:
    """``("jax", C-contiguous host array, extra)`` for a ``jax.Array``; None otherwise."""
    if not _is_array(value):
        return None
    jax = _jax()
    extra: dict[str, Any] = {}
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        extra["key"] = str(jax.random.key_impl(value))
        value = jax.random.key_data(value)
    return encode_host_array(np.asarray(jax.device_get(value)), extra)


def encode_host_array(array: np.ndarray, extra: dict | None = None
                      ) -> tuple[str, np.ndarray, dict]:
    """``("jax", C-contiguous array, extra)`` for a host array; no jax needed.

    Also how a numpy array of an ``ml_dtypes`` dtype is stored (what a plain
    restore of a bfloat16 jax leaf gives, a TensorFlow bfloat16 value): as the
    unsigned integer of its width with the dtype's name, coming back as the same
    numpy array.
    """
    extra = {} if extra is None else extra
    if array.dtype.kind == "V" or is_ml_dtype(array.dtype):
        extra["dtype"] = array.dtype.name
        array = array.view(_UINT_OF_WIDTH[array.dtype.itemsize])
    # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
    return KIND, array if array.flags.c_contiguous else array.copy(order="C"), extra


# ----------------------------------------------------------------- loading


def decode_leaf(kind: str, array: np.ndarray, extra: dict, device: Any = None) -> np.ndarray:
    """The host array a ``"jax"`` leaf holds (bfloat16 as ml_dtypes), without jax.

    Key data comes back as its uint32 array; ``restore(into=)`` a key template
    wraps it again.
    """
    name = extra.get("dtype")
    if name is None:
        return array
    if not isinstance(name, str):
        raise ValueError(f"jax leaf dtype is {name!r}, not a dtype name")
    dtype = _ml_dtype(name)
    if array.dtype != np.dtype(_UINT_OF_WIDTH.get(dtype.itemsize, np.void)):
        raise ValueError(f"jax {name} leaf is stored as {array.dtype}")
    return array.view(dtype)


def _ml_dtype(name: str) -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise ValueError(f"reading a jax {name} leaf needs the ml_dtypes package") from None
    found = getattr(ml_dtypes, name, None)
    if found is None or not isinstance(found, type):
        raise ValueError(f"unknown jax dtype {name!r} (written by a newer ml_dtypes?)")
    return np.dtype(found)


# --------------------------------------------------------- restore into


class _NNXView:
    """``state_dict``/``load_state_dict`` for an ``nnx.State`` or ``nnx.Module``."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def state_dict(self) -> dict:
        return sys.modules["flax.nnx"].to_pure_dict(_nnx_state(self.target))

    def load_state_dict(self, pure: dict) -> None:
        from flax import nnx

        state = _nnx_state(self.target)
        nnx.replace_by_pure_dict(state, pure)
        if isinstance(self.target, nnx.Module):
            nnx.update(self.target, state)


class _StructView:
    """A ``flax.struct`` dataclass (a linen ``TrainState``) as a stateful object.

    Its fields are immutable: ``load_state_dict`` builds a new instance
    (``flax.serialization.from_state_dict``), which ``restore(into=)`` returns in the
    template's place; ``apply_fn``, ``tx`` and other static fields come from the
    template.
    """

    strict = True  # its fields are fixed: every key and shape must match

    def __init__(self, target: Any) -> None:
        self.target = target
        self.rebuilt: Any = None

    def state_dict(self) -> dict:
        return sys.modules["flax.serialization"].to_state_dict(self.target)

    def load_state_dict(self, state: dict) -> None:
        self.rebuilt = sys.modules["flax.serialization"].from_state_dict(self.target, state)


def stateful_view(value: Any) -> Any:
    """A stand-in for an ``nnx.State``, ``nnx.Module`` or ``flax.struct`` template."""
    if _nnx_state(value) is not None:
        return _NNXView(value)
    if _is_flax_struct(value):
        return _StructView(value)
    return None


def array_adapter(value: Any) -> Any:
    """This module for a ``jax.Array`` template (it has mismatch/copy_into)."""
    return sys.modules[__name__] if _is_array(value) else None


def _host_form(template: Any) -> tuple[tuple, np.dtype]:
    """The shape and dtype a template's restored value must have (key data for keys)."""
    jax = _jax()
    if jax.dtypes.issubdtype(template.dtype, jax.dtypes.prng_key):
        data = jax.random.key_data(template)
        return tuple(data.shape), np.dtype(data.dtype)
    return tuple(template.shape), np.dtype(template.dtype)


def mismatch(template: Any, restored: Any) -> tuple[str, str, str] | None:
    """Why ``restored`` cannot fill the ``jax.Array`` ``template``, or None."""
    if _is_array(restored):
        restored = np.asarray(restored)
    if not isinstance(restored, np.ndarray):
        return ("type", describe(template), describe(restored))
    shape, dtype = _host_form(template)
    if shape != restored.shape:
        return ("shape", str(shape), str(restored.shape))
    if dtype != restored.dtype:
        return ("dtype", str(dtype), str(restored.dtype))
    return None


def copy_into(template: Any, restored: np.ndarray) -> Any:
    """A new ``jax.Array`` of ``restored``'s values placed like ``template``.

    jax arrays are immutable: the result replaces the template's leaf.
    """
    jax = _jax()
    value = jax.device_put(np.asarray(restored), template.sharding)
    if jax.dtypes.issubdtype(template.dtype, jax.dtypes.prng_key):
        value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(template))
    return value
