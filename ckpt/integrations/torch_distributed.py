"""torch.distributed states as ckpt trees: FQN state dicts, DTensors as shards.

Models and optimizers of a distributed job (DDP, FSDP2 ``fully_shard``, DTensor
parameters) are stored through torch's own helpers
(``torch.distributed.checkpoint.state_dict``): a model as its FQN-keyed state dict
without wrapper prefixes, an optimizer as its FQN-keyed state dict (parameter names,
not positions), so a checkpoint fits the model however it is wrapped or sharded.
A DTensor becomes its local shard plus where that shard lies in the global tensor;
the rank whose mesh coordinate is 0 on every replicated mesh dimension writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint import state_dict as dcp_state_dict
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from ckpt._types import KeyPath
from ckpt.errors import UnsupportedTypeError
from ckpt.tree import keystr

__all__ = ["Binding", "Shard", "plain_state", "split_dtensors", "load_bindings"]


@dataclass
class Binding:
    """A model or optimizer of the state, and the state dict standing for it."""

    path: KeyPath
    obj: Any
    model: Any  # the optimizer's model (None for a model)
    state: Any


@dataclass
class Shard:
    """Where this rank's piece of a DTensor lies, and whether this rank writes it."""

    global_shape: list[int]
    offsets: list[int]
    shape: list[int]
    owner: bool


def _walk(node: Any, path: KeyPath, visit: Any) -> Any:
    """``node`` with every non-container replaced by ``visit(path, value)`` (dicts,
    lists and tuples are rebuilt, so the caller's containers are left as they are)."""
    if isinstance(node, dict):
        try:
            out = type(node)()
        except TypeError:  # a dict subclass that cannot be built empty: a plain dict
            out = {}
        for key, value in node.items():
            out[key] = _walk(value, (*path, key), visit)
        return out
    if type(node) in (list, tuple):
        return type(node)(_walk(v, (*path, i), visit) for i, v in enumerate(node))
    return visit(path, node)


def plain_state(state: Any) -> tuple[Any, list[Binding]]:
    """``state`` with models and optimizers replaced by their FQN state dicts.

    Each optimizer is paired with the model in the same state that holds its
    parameters (torch's helpers need both). For a restore template, an optimizer
    that has not stepped yet gets its state created (zeros) so that it can be filled.
    """
    modules: list[tuple[KeyPath, torch.nn.Module]] = []

    def find(path: KeyPath, value: Any) -> Any:
        if isinstance(value, torch.nn.Module):
            modules.append((path, value))
        return value

    _walk(state, (), find)
    bindings: list[Binding] = []

    def convert(path: KeyPath, value: Any) -> Any:
        if isinstance(value, torch.nn.Module):
            # torch's helper strips DDP and torch.compile prefixes itself
            sd = dcp_state_dict.get_model_state_dict(value)
            model = None
        elif isinstance(value, torch.optim.Optimizer):
            model = _model_of(value, modules, path)
            sd = dcp_state_dict.get_optimizer_state_dict(model, value)
        else:
            return value
        bindings.append(Binding(path, value, model, sd))
        return sd

    return _walk(state, (), convert), bindings


def _model_of(optimizer: torch.optim.Optimizer, modules: list, path: KeyPath) -> Any:
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for _, module in modules:
        if any(id(p) in params for p in module.parameters()):
            return module
    raise UnsupportedTypeError(keystr(path), type(optimizer).__name__,
                               "in a distributed save an optimizer is stored by parameter "
                               "name, so its model must be in the same state (e.g. "
                               "{'model': model, 'optim': optimizer})")


def split_dtensors(tree: Any) -> tuple[Any, dict[KeyPath, Shard]]:
    """``tree`` with each DTensor replaced by its local tensor (same storage), and
    each one's :class:`Shard`. A Partial DTensor (an unreduced sum) is refused."""
    shards: dict[KeyPath, Shard] = {}

    def local(path: KeyPath, value: Any) -> Any:
        if not isinstance(value, DTensor):
            return value
        placements = value.placements
        if any(p.is_partial() for p in placements):
            raise UnsupportedTypeError(keystr(path), "DTensor", "a Partial DTensor holds an "
                                       "unreduced sum: redistribute it to Shard or Replicate")
        coordinate = value.device_mesh.get_coordinate()
        shape, offsets = compute_local_shape_and_global_offset(
            value.shape, value.device_mesh, placements)
        owner = coordinate is not None and all(
            c == 0 for c, p in zip(coordinate, placements) if not p.is_shard())
        shards[path] = Shard([int(d) for d in value.shape], [int(o) for o in offsets],
                             [int(d) for d in shape], owner)
        with torch.no_grad():
            return value.to_local()

    return _walk(tree, (), local), shards


def load_bindings(bindings: list[Binding]) -> None:
    """Load each filled state dict into its model or optimizer (models first)."""
    for binding in sorted(bindings, key=lambda b: b.model is not None):
        if binding.model is None:
            dcp_state_dict.set_model_state_dict(binding.obj, binding.state)
        else:
            dcp_state_dict.set_optimizer_state_dict(binding.model, binding.obj, binding.state)
