"""Keras 3 models, optimizers, metrics and variables as ckpt state; exact resume in fit.

Loaded by :mod:`ckpt._adapters` when a Keras object is first seen, on whichever
backend Keras runs (torch and jax are tested; tensorflow behind an opt-in flag).

State layout
------------
A ``keras.Model`` is stored as ``{"weights": ..., "optimizer": ...}``:

* ``weights``: one dict per layer, nested like the model, holding the layer's
  variables by name, non-trainable ones and seed-generator states included
  (``weights/dense/kernel``, ``weights/dropout/seed_generator_state``). Layers are
  keyed as Keras' own weights files key them, by class name in snake case numbered
  in model order (``dense``, ``dense_1``, ...), never by ``layer.name``, which Keras
  generates afresh (``dense_7``) each time a model is built in the same process;
* ``optimizer`` (compiled models): its own variables by name (``iteration``,
  ``learning_rate``) and ``slots``: per model variable (``'dense/kernel'``) its
  slot variables by kind (``momentum``, ``velocity``).

A standalone optimizer keeps its slots in a list, in the order of the variables it
trains; a ``Metric`` and a ``Layer`` store their variables by name; a
``keras.Variable`` stores its value. Values are numpy arrays (the backend's own
tensor for dtypes numpy lacks, such as bfloat16). Restoring *into* these objects
assigns every variable, and builds an optimizer that has not been built yet.

Also here: :class:`BackupAndRestore` (exact mid-epoch resume inside ``model.fit``),
:func:`save_model`/:func:`load_model` (one plain HDF5 file with architecture,
compile config, weights and optimizer state) and architecture-only JSON/YAML.
"""

from __future__ import annotations

from ckpt.integrations._keras_fit import BackupAndRestore, ResumableDataset
from ckpt.integrations._keras_saving import (
    load_model,
    model_from_json,
    model_from_yaml,
    model_metadata,
    save_model,
    to_json,
    to_yaml,
)
from ckpt.integrations._keras_state import (
    ModelState,
    OptimizerState,
    VariablesState,
    VariableState,
    model_variables,
    stateful_view,
    stored_form,
)

__all__ = ["BackupAndRestore", "ResumableDataset", "save_model", "load_model", "to_json",
           "to_yaml", "model_from_json", "model_from_yaml", "model_metadata", "ModelState",
           "OptimizerState", "VariablesState", "VariableState", "model_variables",
           "stateful_view", "stored_form"]
