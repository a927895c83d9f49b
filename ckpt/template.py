"""Restore into a template: fill arrays in place, call ``load_state_dict``.

The comparison runs first and touches nothing; only when it passes (or with
``strict=False``, for the parts that match) is anything filled. So a mismatched
checkpoint never leaves the template half-restored.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ckpt._types import KeyPath, is_stateful
from ckpt.tree import keystr

__all__ = ["fill", "describe"]

_CONTAINERS = (dict, list, tuple)


def describe(value: Any) -> str:
    """A short description for mismatch reports: type, dtype and shape."""
    if isinstance(value, np.ndarray):
        return f"array {value.dtype} {tuple(value.shape)}"
    if hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(value, np.generic):
        return f"{type(value).__name__} {value.dtype} {tuple(value.shape)}"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def fill(template: Any, restored: Any, *, apply: bool, path: KeyPath = (),
         mismatches: list | None = None) -> Any:
    """Match ``restored`` against ``template``; with ``apply``, fill it in.

    Collects ``(key, kind, expected, found)`` mismatches in ``mismatches``. With
    ``apply`` true, returns the template's tree with restored values: numpy arrays
    (and tensors, through their adapter) filled in place, stateful objects loaded,
    immutable leaves replaced; mismatched parts keep the template's value.
    """
    if mismatches is None:
        mismatches = []
    if is_stateful(template) and not isinstance(template, _CONTAINERS):
        state = template.state_dict()
        # with strict=False the object gets its own state with the matching parts
        # restored, which is what "restore what matches" means for it
        merged = fill(state, restored, apply=apply, path=path, mismatches=mismatches)
        if apply:
            template.load_state_dict(merged)
        return template
    if isinstance(template, dict):
        return _fill_dict(template, restored, apply, path, mismatches)
    if isinstance(template, (list, tuple)):
        return _fill_sequence(template, restored, apply, path, mismatches)
    return _fill_leaf(template, restored, apply, path, mismatches)


def _fill_dict(template: dict, restored: Any, apply: bool, path: KeyPath,
               mismatches: list) -> Any:
    if not isinstance(restored, dict):
        mismatches.append((keystr(path), "type", "dict", describe(restored)))
        return template
    if not template:
        # An empty dict accepts whatever the checkpoint has: a fresh optimizer's
        # state is {} until its first step, and must still take the saved state.
        return restored if apply else template
    out = {}
    for key, value in template.items():
        if key in restored:
            out[key] = fill(value, restored[key], apply=apply, path=(*path, key),
                            mismatches=mismatches)
        else:
            mismatches.append((keystr((*path, key)), "missing", describe(value),
                               "nothing in the checkpoint"))
            out[key] = value
    for key in restored:
        if key not in template:
            mismatches.append((keystr((*path, key)), "unexpected", "nothing in the template",
                               describe(restored[key])))
    return type(template)(out) if apply else template


def _fill_sequence(template: list | tuple, restored: Any, apply: bool, path: KeyPath,
                   mismatches: list) -> Any:
    if not isinstance(restored, (list, tuple)):
        mismatches.append((keystr(path), "type", describe(template), describe(restored)))
        return template
    out = [fill(t, r, apply=apply, path=(*path, i), mismatches=mismatches)
           for i, (t, r) in enumerate(zip(template, restored))]
    for i in range(len(restored), len(template)):
        mismatches.append((keystr((*path, i)), "missing", describe(template[i]),
                           "nothing in the checkpoint"))
        out.append(template[i])
    for i in range(len(template), len(restored)):
        mismatches.append((keystr((*path, i)), "unexpected", "nothing in the template",
                           describe(restored[i])))
    return type(template)(out) if apply else template


def _fill_leaf(template: Any, restored: Any, apply: bool, path: KeyPath,
               mismatches: list) -> Any:
    key = keystr(path)
    if isinstance(restored, _CONTAINERS):
        mismatches.append((key, "type", describe(template), describe(restored)))
        return template
    if isinstance(template, np.ndarray):
        if not isinstance(restored, np.ndarray):
            mismatches.append((key, "type", describe(template), describe(restored)))
        elif template.shape != restored.shape or template.dtype != restored.dtype:
            # report shape and dtype both when both differ, not just the first
            if template.shape != restored.shape:
                mismatches.append((key, "shape", str(template.shape), str(restored.shape)))
            if template.dtype != restored.dtype:
                mismatches.append((key, "dtype", str(template.dtype), str(restored.dtype)))
        elif apply:
            if template.flags.writeable:
                np.copyto(template, restored)
                return template
            return restored
        return template
    adapter = _tensor_adapter(template)
    if adapter is not None:
        problems = adapter.mismatches(template, restored)
        if problems:
            mismatches.extend((key, *problem) for problem in problems)
            return template
        return adapter.copy_into(template, restored) if apply else template
    if template is not None and type(template) is not type(restored):
        mismatches.append((key, "type", describe(template), describe(restored)))
        return template
    return restored if apply else template


def _tensor_adapter(value: Any) -> Any:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    if torch is not None and isinstance(value, torch.Tensor):
        from ckpt.integrations import torch as torch_adapter

        return torch_adapter
    return None
