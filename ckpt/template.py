"""Restore into a template: compare first, then fill containers, arrays and objects in place.

A restore into a template runs in two passes over the same template:

1. **plan** against :class:`LeafSpec` placeholders built from the index alone: every
   missing or unexpected key, type, shape and dtype difference is collected before
   a byte is read, and every template array or CPU tensor that can take its leaf's
   bytes directly is noted as that leaf's *destination* (read straight into it, no
   second copy of the state);
2. **apply** with the values read: mutable containers (dict, OrderedDict, list, ...)
   are updated in place, arrays and tensors filled, stateful objects get
   ``load_state_dict``; tuples and other immutables are rebuilt.

Stateful objects follow their own contract. An ``nn.Module``'s keys must match
(as torch's strict ``load_state_dict`` demands). Any other stateful object (an
optimizer, a scheduler, a sampler) gets whatever keys the checkpoint holds, since
its ``load_state_dict`` decides what it accepts: optimizers add keys to their state
and ``param_groups`` as they step, so a fresh template lacks them. Shapes and
dtypes of tensors and arrays that both sides have are checked everywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ckpt import _adapters
from ckpt._types import KeyPath, is_stateful
from ckpt.tree import is_ml_dtype, keystr

__all__ = ["LeafSpec", "Plan", "describe", "plan", "apply"]

_CONTAINERS = (dict, list, tuple, set, frozenset)
_KIND_TYPES: dict[str, type] = {
    "bool": bool, "int": int, "bigint": int, "float": float, "complex": complex,
    "str": str, "bytes": bytes, "none": type(None), "ndarray": np.ndarray,
}


class LeafSpec:
    """What the checkpoint holds at one leaf, known from the index without reading it."""

    __slots__ = ("number", "kind", "dtype", "shape", "extra", "alias")

    def __init__(self, number: int, entry: dict) -> None:
        self.number = number
        self.kind = entry["kind"]
        self.dtype = np.dtype(entry["dtype"])
        self.shape = tuple(entry["shape"])
        self.extra = entry.get("extra") or {}
        self.alias = entry.get("alias")  # stored as a view of another leaf's bytes

    def value_type(self) -> type | None:
        """The Python type this leaf comes back as (None: only its adapter knows)."""
        if self.kind == "npscalar":
            return self.dtype.type
        return _KIND_TYPES.get(self.kind)

    def __repr__(self) -> str:
        return f"LeafSpec({self.number}, {self.kind}, {self.dtype}, {self.shape})"


def describe(value: Any) -> str:
    """A short description for mismatch reports: type, dtype and shape."""
    if isinstance(value, LeafSpec):
        if value.kind == "torch":
            return f"Tensor torch.{value.extra.get('dtype')} {value.shape}"
        if value.kind == "ndarray":
            return f"array {value.dtype} {value.shape}"
        kind = value.value_type()
        return kind.__name__ if kind is not None else value.kind
    if isinstance(value, np.ndarray):
        return f"array {value.dtype} {tuple(value.shape)}"
    if hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(value, np.generic):
        return f"{type(value).__name__} {value.dtype} {tuple(value.shape)}"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, _CONTAINERS):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


class Plan:
    """What the plan pass found: mismatches, hints, destinations, and the state dicts
    of the template's stateful objects (taken once, so both passes see the same)."""

    def __init__(self) -> None:
        self.mismatches: list[tuple[str, str, str, str]] = []
        self.hints: list[str] = []
        self.destinations: dict[int, np.ndarray] = {}
        self.targets: dict[int, Any] = {}  # leaf number -> the template object it fills
        self.states: dict[int, Any] = {}  # id(stateful object) -> its state dict
        self.views: dict[int, Any] = {}  # id(framework object) -> its stateful stand-in
        self.late: list[tuple[str, str, str, str]] = []  # found only with the values
        # leaves whose read value is only copied into the template (a jax array, a
        # tensor that cannot be read into): scratch memory, dropped after the copy
        self.transient: set[int] = set()


def plan(template: Any, specs: Any, result: Plan, path: KeyPath = ()) -> None:
    """Compare ``template`` with the checkpoint's ``specs`` tree; record into ``result``."""
    _Walk(result, planning=True).fill(template, specs, path, lenient=False)


def apply(template: Any, restored: Any, result: Plan, path: KeyPath = ()) -> Any:
    """Fill ``template`` with ``restored`` values; returns the filled template.

    Parts that do not match (``strict=False``) keep the template's value.
    """
    walk = _Walk(result, planning=False)
    filled = walk.fill(template, restored, path, lenient=False)
    result.late.extend(walk.mismatches)
    return filled


class _Walk:
    def __init__(self, result: Plan, planning: bool) -> None:
        self.result = result
        self.planning = planning
        self.mismatches = result.mismatches if planning else []

    def mismatch(self, path: KeyPath, kind: str, expected: str, found: str) -> None:
        self.mismatches.append((keystr(path), kind, expected, found))

    def fill(self, template: Any, restored: Any, path: KeyPath, lenient: bool) -> Any:
        view = self.view_of(template)
        if view is not None:  # a keras.Model, an nnx.State: through a stateful stand-in
            self.stateful(view, restored, path)
            # an immutable object (a flax TrainState) comes back as a new instance
            rebuilt = None if self.planning else getattr(view, "rebuilt", None)
            return template if rebuilt is None else rebuilt
        if is_stateful(template) and not isinstance(template, _CONTAINERS):
            return self.stateful(template, restored, path)
        if type(template) in _SPECIAL_LEAVES():
            return self.leaf(template, restored, path, lenient)
        if isinstance(template, dict):
            return self.mapping(template, restored, path, lenient)
        if isinstance(template, (list, tuple)):
            return self.sequence(template, restored, path, lenient)
        if isinstance(template, (set, frozenset)):
            return self.set_(template, restored, path, lenient)
        return self.leaf(template, restored, path, lenient)

    # ------------------------------------------------------------ objects

    def view_of(self, template: Any) -> Any:
        # one stand-in per object for both passes, so both see the same state dict
        key = id(template)
        if key not in self.result.views:
            self.result.views[key] = _adapters.stateful_view(template)
        return self.result.views[key]

    def stateful(self, obj: Any, restored: Any, path: KeyPath) -> Any:
        adapter = _torch_adapter()
        is_module = adapter is not None and adapter.is_module(obj)
        key = id(obj)
        if key not in self.result.states:
            self.result.states[key] = (adapter.module_state_dict(obj) if is_module
                                       else obj.state_dict())
        state = self.result.states[key]
        if is_module and isinstance(restored, Mapping):
            restored = adapter.canonical_restored(restored, state)
        if self.planning and adapter is not None and isinstance(restored, Mapping):
            for problem in adapter.structure_mismatches(obj, state, restored):
                self.mismatch(path, *problem)
        before = len(self.mismatches)
        # a module's keys must match, as must a view's that says so (a flax struct's
        # fields); any other object's load_state_dict decides what it accepts
        strict = is_module or getattr(obj, "strict", False)
        merged = self.fill(state, restored, path, lenient=not strict)
        if self.planning:
            if is_module and len(self.mismatches) > before:
                hint = adapter.prefix_hint(keystr(path), self.mismatches[before:])
                if hint:
                    self.result.hints.append(hint)
            return obj
        if is_module:
            adapter.load_module_state(obj, merged)
        else:
            _load(obj, merged, path)
        return obj

    # --------------------------------------------------------- containers

    def mapping(self, template: dict, restored: Any, path: KeyPath, lenient: bool) -> Any:
        if not isinstance(restored, dict):
            if not lenient:
                self.mismatch(path, "type", "dict", describe(restored))
            return template if not lenient or self.planning else restored
        if not template:
            # An empty dict accepts whatever the checkpoint has: a fresh optimizer's
            # state is {} until its first step, and must still take the saved state.
            if not self.planning:
                template.clear()
                template.update(restored)
            return template
        if lenient:
            # the object's own load_state_dict decides about keys one side lacks
            out = {k: (self.fill(template[k], v, (*path, k), True) if k in template else v)
                   for k, v in restored.items()}
            return template if self.planning else _rebuild_mapping(template, out)
        for key, value in template.items():
            if key in restored:
                filled = self.fill(value, restored[key], (*path, key), False)
                if not self.planning and filled is not value:
                    template[key] = filled
            else:
                self.mismatch((*path, key), "missing", describe(value),
                              "nothing in the checkpoint")
        for key in restored:
            if key not in template:
                self.mismatch((*path, key), "unexpected", "nothing in the template",
                              describe(restored[key]))
        return template

    def sequence(self, template: list | tuple, restored: Any, path: KeyPath,
                 lenient: bool) -> Any:
        if not isinstance(restored, (list, tuple)):
            if not lenient:
                self.mismatch(path, "type", describe(template), describe(restored))
            return template if not lenient or self.planning else restored
        filled = [self.fill(t, r, (*path, i), lenient)
                  for i, (t, r) in enumerate(zip(template, restored))]
        if lenient:
            filled += list(restored[len(template):])
        else:
            for i in range(len(restored), len(template)):
                self.mismatch((*path, i), "missing", describe(template[i]),
                              "nothing in the checkpoint")
            for i in range(len(template), len(restored)):
                self.mismatch((*path, i), "unexpected", "nothing in the template",
                              describe(restored[i]))
            filled += list(template[len(restored):])
        if self.planning:
            return template
        if type(template) is list and not lenient:
            template[:len(filled)] = filled  # in place: the caller's list is current
            return template
        return _rebuild_sequence(template, filled)

    def set_(self, template: set | frozenset, restored: Any, path: KeyPath,
             lenient: bool) -> Any:
        if not isinstance(restored, (set, frozenset)):
            if not lenient:
                self.mismatch(path, "type", describe(template), describe(restored))
            return template if not lenient or self.planning else restored
        if self.planning:
            return template
        if type(template) is set:
            template.clear()
            template.update(restored)
            return template
        return restored

    # ------------------------------------------------------------- leaves

    def leaf(self, template: Any, restored: Any, path: KeyPath, lenient: bool) -> Any:
        if isinstance(restored, _CONTAINERS) and not isinstance(template, _CONTAINERS):
            if not lenient:
                self.mismatch(path, "type", describe(template), describe(restored))
            return template if not lenient or self.planning else restored
        if self.planning:
            self.plan_leaf(template, restored, path, lenient)
            return template
        return self.apply_leaf(template, restored, path, lenient)

    def plan_leaf(self, template: Any, spec: LeafSpec, path: KeyPath, lenient: bool) -> None:
        if isinstance(template, np.ndarray) and _ml_array_of(template, spec):
            # a numpy bfloat16 (ml_dtypes) array, stored as its unsigned bits
            problems = ([] if template.shape == spec.shape
                        else [("shape", str(template.shape), str(spec.shape))])
            if not problems:
                bits = template.view(spec.dtype) if template.ndim else None
                self.destine(spec, template,
                             bits if bits is not None and _fillable(bits, spec) else None)
        elif isinstance(template, np.ndarray):
            problems = _array_spec_mismatch(template, spec)
            if not problems:
                self.destine(spec, template, template if _fillable(template, spec) else None)
                if spec.number not in self.result.destinations:
                    # copied into it, or (read-only) handed to a stateful object's
                    # load_state_dict, which copies it (a Keras variable on jax)
                    self.result.transient.add(spec.number)
        elif (adapter := _tensor_adapter(template)) is not None:
            if not hasattr(adapter, "spec_mismatches"):
                # a framework array (jax): checked against the values it gets
                self.result.transient.add(spec.number)
                return
            problems = adapter.spec_mismatches(template, spec)
            if not problems:
                self.destine(spec, template, adapter.destination(template, spec))
                if spec.number not in self.result.destinations:
                    self.result.transient.add(spec.number)
        else:
            if lenient or template is None:
                return
            expected = spec.value_type()
            if expected is None:  # a torch value kind: its adapter knows the type
                expected = _torch_adapter().value_type(spec.kind)
            problems = ([] if type(template) is expected
                        else [("type", describe(template), describe(spec))])
        for problem in problems:
            if not (lenient and problem[0] == "type"):
                self.mismatch(path, *problem)

    def destine(self, spec: LeafSpec, template: Any, destination: np.ndarray | None) -> None:
        self.result.targets[spec.number] = template
        if destination is not None:
            self.result.destinations[spec.number] = destination

    def apply_leaf(self, template: Any, restored: Any, path: KeyPath, lenient: bool) -> Any:
        if restored is template:  # read straight into the template's memory
            return template
        if isinstance(template, np.ndarray):
            if not isinstance(restored, np.ndarray):
                return restored if lenient else template
            if template.shape != restored.shape or template.dtype != restored.dtype:
                return template
            if template.flags.writeable:
                np.copyto(template, restored)
                return template
            return restored
        adapter = _tensor_adapter(template)
        if adapter is not None:
            problems = _adapter_mismatches(adapter, template, restored)
            if problems:
                if lenient and problems[0][0] == "type":
                    return restored
                if not lenient:
                    for problem in problems:
                        self.mismatch(path, *problem)
                return template
            return adapter.copy_into(template, restored)
        if (template is not None and type(template) is not type(restored)) and not lenient:
            return template
        return restored


def _array_spec_mismatch(template: np.ndarray, spec: LeafSpec) -> list[tuple[str, str, str]]:
    if spec.kind != "ndarray":
        return [("type", describe(template), describe(spec))]
    problems = []
    if template.shape != spec.shape:  # a shape and a dtype difference are both reported
        problems.append(("shape", str(template.shape), str(spec.shape)))
    if template.dtype != spec.dtype:
        problems.append(("dtype", str(template.dtype), str(spec.dtype)))
    return problems


def _adapter_mismatches(adapter: Any, template: Any, restored: Any) -> list:
    # torch reports every difference; older adapters (jax) report the first one
    if hasattr(adapter, "mismatches"):
        return adapter.mismatches(template, restored)
    problem = adapter.mismatch(template, restored)
    return [problem] if problem else []


def _ml_array_of(array: np.ndarray, spec: LeafSpec) -> bool:
    """Whether ``spec`` holds the bits of an ml_dtypes array of ``array``'s dtype."""
    return (spec.kind == "jax" and spec.extra.get("dtype") == array.dtype.name
            and is_ml_dtype(array.dtype))


def _fillable(array: np.ndarray, spec: LeafSpec) -> bool:
    """Whether the leaf's bytes can be read straight into ``array``."""
    flags = array.flags
    return (flags.writeable and flags.c_contiguous and flags.aligned
            and array.dtype.str == spec.dtype.str and array.size > 0)


def _load(obj: Any, state: Any, path: KeyPath) -> None:
    from ckpt.errors import StateMismatchError

    try:
        obj.load_state_dict(state)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as error:
        # the object refused what the checkpoint holds: say where, not only what
        raise StateMismatchError("<template>", [(
            keystr(path), "refused by load_state_dict", f"what {type(obj).__name__} accepts",
            f"{type(error).__name__}: {str(error)[:300]}")]) from error


def _rebuild_mapping(template: dict, items: dict) -> dict:
    out = type(template).__new__(type(template))
    if hasattr(template, "default_factory"):
        out.default_factory = template.default_factory
    dict.update(out, items)
    return out


def _rebuild_sequence(template: list | tuple, items: list) -> Any:
    if type(template) in (list, tuple):
        return type(template)(items)
    return type(template)(items) if not hasattr(template, "_fields") else type(template)(*items)


def _SPECIAL_LEAVES() -> tuple:  # noqa: N802 - a constant that needs torch
    """Leaf types that are containers to Python (torch.Size is a tuple)."""
    torch = sys.modules.get("torch")
    return (torch.Size,) if torch is not None else ()


def _torch_adapter() -> Any:
    if "torch" not in sys.modules:  # a torch object exists only if torch was imported
        return None
    from ckpt.integrations import torch as torch_adapter

    return torch_adapter


def _tensor_adapter(value: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _torch_adapter()
    return _adapters.array_adapter(value)  # jax.Array


def fill_from(template: Any, restored: Any, source: str, path: KeyPath = ()) -> Any:
    """Fill ``template`` from a tree of values already in memory (not read from a file).

    The same two passes as a restore: every difference raises one
    ``StateMismatchError`` naming ``source`` before anything is touched.
    """
    from ckpt.errors import StateMismatchError
    from ckpt.tree import encode_tree, unflatten

    treedef, leaves = encode_tree(restored)
    specs = unflatten(treedef, {
        number: LeafSpec(number, {"kind": kind, "dtype": array.dtype.str,
                                  "shape": list(array.shape), "extra": extra,
                                  "alias": extra.get("alias")})
        for number, (_, kind, array, extra) in enumerate(leaves)})
    result = Plan()
    plan(template, specs, result, path)
    if result.mismatches:
        raise StateMismatchError(source, result.mismatches, hint="\n".join(result.hints))
    filled = apply(template, restored, result, path)
    if result.late:
        raise StateMismatchError(source, result.late)
    return filled
