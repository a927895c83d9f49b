"""Keras objects as ckpt state: stable key paths, numpy values, restore by assignment.

The layout is described in :mod:`ckpt.integrations.keras`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from ckpt.errors import StateMismatchError
from ckpt.tree import is_ml_dtype, keystr

__all__ = ["stored_form", "stateful_view", "ModelState", "OptimizerState",
           "VariablesState", "VariableState", "model_variables"]


# ----------------------------------------------------------------- values


def _host(variable: Any) -> Any:
    """A variable's value for saving: numpy, or the backend tensor for bfloat16 & co."""
    value = variable.value
    try:
        dtype = np.dtype(variable.dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind == "V" or is_ml_dtype(dtype):
        if type(value).__module__.startswith("tensorflow"):
            return value.numpy()  # an ml_dtypes array, stored with its bits
        return value  # torch and jax tensors keep their bits through their adapters
    detach = getattr(value, "detach", None)
    if detach is not None and getattr(value, "device", None) is not None \
            and value.device.type == "cpu":
        # torch backend: a view of the variable's memory, not a copy (convert_to_numpy
        # copies); the save writes it out before training touches it again, and an
        # async save stages its own copy
        return detach().numpy()
    if type(value).__module__.startswith(("jax", "jaxlib")):
        return np.asarray(value)  # jax backend: the host buffer, not a copy (read-only)
    return keras.ops.convert_to_numpy(value)


def _assign(variable: Any, value: Any, key: str) -> None:
    if tuple(np.shape(value)) != tuple(variable.shape):
        raise StateMismatchError("keras", [(key, "shape", str(tuple(variable.shape)),
                                            str(tuple(np.shape(value))))])
    variable.assign(value)


def _unique(name: str, used: dict[str, int]) -> str:
    """Keras' own de-duplication: ``dense``, ``dense_1``, ``dense_2``..."""
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _snake(name: str) -> str:
    from keras.src.utils.naming import to_snake_case

    return to_snake_case(name)


# -------------------------------------------------------------- variables


def _sublayers(layer: Any) -> list:
    if isinstance(layer, keras.Model) and hasattr(layer, "layers"):
        return list(layer.layers)
    flatten = getattr(layer, "_flatten_layers", None)  # a Metric has no sublayers
    return list(flatten(include_self=False, recursive=False)) if flatten else []


def model_variables(layer: Any) -> dict[str, Any]:
    """``{"dense/kernel": Variable}``: every variable of ``layer``, by stable key path."""
    out: dict[str, Any] = {}
    for path, variable in _walk_layer(layer, ()):
        out["/".join(path)] = variable
    return out


def _walk_layer(layer: Any, prefix: tuple) -> Iterator[tuple[tuple, Any]]:
    subs = _sublayers(layer)
    below = {id(v) for sub in subs for v in sub.variables}
    used: dict[str, int] = {}
    for variable in layer.variables:
        if id(variable) not in below:
            yield (*prefix, _unique(variable.name, used)), variable
    for sub in subs:
        yield from _walk_layer(sub, (*prefix, _unique(_snake(type(sub).__name__), used)))


def _nest(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}/{key}" if prefix else str(key)))
    return out


class VariablesState:
    """Named variables (a layer's, a metric's) as a nested dict of their values."""

    def __init__(self, variables: dict[str, Any], where: str) -> None:
        self.variables = variables
        self.where = where

    def state_dict(self) -> dict:
        """``{name: value}``, nested where names hold ``/``."""
        return _nest({key: _host(v) for key, v in self.variables.items()})

    def load_state_dict(self, state: dict) -> None:
        """Assign each variable its saved value; every variable must be there."""
        flat = _flat(state)
        missing = [(f"{self.where}/{key}", "missing", "a variable", "nothing in the checkpoint")
                   for key in self.variables if key not in flat]
        if missing:
            raise StateMismatchError("keras", missing)
        for key, variable in self.variables.items():
            _assign(variable, flat[key], f"{self.where}/{key}")


# -------------------------------------------------------------- optimizer


def _slot_owner(slot: Any, trainables: list) -> int | None:
    """Index of the variable a slot was made for (``add_variable_from_reference``)."""
    best = None
    for index, variable in enumerate(trainables):
        prefix = variable.path.replace("/", "_") + "_"
        if slot.name.startswith(prefix) and (best is None or len(prefix) > best[1]):
            best = (index, len(prefix))
    return None if best is None else best[0]


class OptimizerState:
    """An optimizer's variables: its own by name, its slots per trained variable.

    ``names`` maps each trained variable (by id) to its key in the model; without
    it, slots are a list in the optimizer's order.
    """

    def __init__(self, optimizer: Any, names: dict[int, str] | None = None) -> None:
        self.optimizer = optimizer
        self.names = names

    def _layout(self) -> tuple[dict[str, Any], dict[Any, dict[str, Any]]]:
        trainables = list(getattr(self.optimizer, "_trainable_variables", []))
        own: dict[str, Any] = {}
        slots: dict[Any, dict[str, Any]] = {}
        used: dict[str, int] = {}
        for variable in self.optimizer.variables:
            owner = _slot_owner(variable, trainables) if trainables else None
            if owner is None:
                own[_unique(variable.name, used)] = variable
                continue
            prefix = trainables[owner].path.replace("/", "_") + "_"
            key = self.names.get(id(trainables[owner]), owner) if self.names else owner
            slots.setdefault(key, {})[variable.name[len(prefix):]] = variable
        return own, slots

    def state_dict(self) -> dict:
        """``{"iteration": ..., "learning_rate": ..., "slots": ...}``."""
        own, slots = self._layout()
        state: dict[str, Any] = {key: _host(v) for key, v in own.items()}
        values = {key: {kind: _host(v) for kind, v in group.items()}
                  for key, group in slots.items()}
        state["slots"] = values if self.names else [values[i] for i in sorted(values)]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Assign every variable; the slot variables are created first if need be."""
        if not self.optimizer.built and state.get("slots"):
            raise StateMismatchError("keras", [("optimizer/slots", "missing",
                                                "a built optimizer", "an unbuilt one: "
                                                "restore the model, which builds it")])
        own, slots = self._layout()
        saved_slots = state.get("slots") or ({} if self.names else [])
        if not self.names:
            saved_slots = dict(enumerate(saved_slots))
        problems = [(f"optimizer/{key}", "missing", "a variable", "nothing in the checkpoint")
                    for key in own if key not in state]
        problems += [(f"optimizer/slots/{keystr([key])}/{kind}", "missing", "a slot",
                      "nothing in the checkpoint")
                     for key, group in slots.items() for kind in group
                     if kind not in (saved_slots.get(key) or {})]
        if problems:
            raise StateMismatchError("keras", problems)
        for key, variable in own.items():
            _assign(variable, state[key], f"optimizer/{key}")
        for key, group in slots.items():
            for kind, variable in group.items():
                _assign(variable, saved_slots[key][kind], f"optimizer/slots/{key}/{kind}")


# ------------------------------------------------------------------ model


class ModelState:
    """A model's weights and (when compiled) optimizer, keyed by stable paths."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def _optimizer(self) -> OptimizerState | None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        names = {id(v): key for key, v in model_variables(self.model).items()}
        return OptimizerState(optimizer, names)

    def state_dict(self) -> dict:
        """``{"weights": {layer: {variable: value}}, "optimizer": {...}}``."""
        state: dict[str, Any] = {
            "weights": VariablesState(model_variables(self.model), "weights").state_dict()}
        optimizer = self._optimizer()
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Assign every weight; build the optimizer if needed and assign its state."""
        VariablesState(model_variables(self.model), "weights").load_state_dict(state["weights"])
        optimizer = self._optimizer()
        if optimizer is None or "optimizer" not in state:
            return
        if not optimizer.optimizer.built:
            optimizer.optimizer.build(self.model.trainable_variables)
            optimizer = self._optimizer()
        optimizer.load_state_dict(state["optimizer"])


class VariableState:
    """One ``keras.Variable``: its value."""

    def __init__(self, variable: Any) -> None:
        self.variable = variable

    def state_dict(self) -> Any:
        """The value (numpy, or the backend tensor for dtypes numpy lacks)."""
        return _host(self.variable)

    def load_state_dict(self, value: Any) -> None:
        """Assign the saved value."""
        _assign(self.variable, value, self.variable.name)


def stateful_view(value: Any) -> Any:
    """The state view of a Keras object (model, optimizer, metric, layer, variable)."""
    if isinstance(value, keras.Model):
        return ModelState(value)
    if isinstance(value, keras.optimizers.Optimizer):
        return OptimizerState(value)
    if isinstance(value, (keras.metrics.Metric, keras.layers.Layer)):
        return VariablesState(model_variables(value), type(value).__name__)
    if isinstance(value, keras.Variable):
        return VariableState(value)
    return None


def stored_form(value: Any) -> Any:
    """What ckpt stores for a Keras object: its state view (see module docstring)."""
    return stateful_view(value)
