"""The whole-model flow of the Keras guides on ckpt files, and architecture-only JSON/YAML.

``save_model(model, path)`` writes one plain HDF5 file: the weights and optimizer
state as a ckpt tree under ``model``, the architecture (``serialize_keras_object``)
and compile config as JSON in the file's metadata. ``load_model(path)`` rebuilds a
Functional or Sequential model (or a registered subclass) without its code,
compiles it from the saved config and fills in every variable, so predictions are
equal and training continues exactly. Nothing is pickled; no code runs on load
beyond Keras' own deserialization of the config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import keras

from ckpt import template
from ckpt.errors import CheckpointError
from ckpt.files import load, load_metadata, save

__all__ = ["MODEL_FORMAT", "model_metadata", "save_model", "load_model", "build_model",
           "to_json", "to_yaml", "model_from_json", "model_from_yaml"]

MODEL_FORMAT = "ckpt.keras.model"


def model_metadata(model: keras.Model, key: str | None = None) -> dict[str, Any]:
    """JSON metadata that lets a checkpoint rebuild ``model``: config, compile config.

    ``key`` names where the model sits in the saved state (``"model"``).
    """
    compile_config = model.get_compile_config() if model.compiled else None
    return {"format": MODEL_FORMAT, "keras_version": keras.__version__,
            "backend": keras.backend.backend(), "key": key,
            "config": keras.saving.serialize_keras_object(model),
            "compile_config": compile_config}


def save_model(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """Write architecture, compile config, weights and optimizer state to ``path``."""
    save(path, {"model": model}, metadata=model_metadata(model, key="model"))


def build_model(metadata: Mapping[str, Any], *, compile: bool = True) -> keras.Model:
    """The model :func:`model_metadata` describes, fresh weights, compiled if asked."""
    if not isinstance(metadata, Mapping) or metadata.get("format") != MODEL_FORMAT:
        raise CheckpointError("no Keras model config here (save with "
                              "ckpt.integrations.keras.save_model or BackupAndRestore)")
    model = keras.saving.deserialize_keras_object(metadata["config"])
    compile_config = metadata.get("compile_config")
    if compile and compile_config:
        model.compile_from_config(compile_config)
    return model


def load_model(path: str | os.PathLike[str], *, compile: bool = True) -> keras.Model:
    """Rebuild the model :func:`save_model` wrote: architecture, weights, optimizer."""
    model = build_model(load_metadata(path), compile=compile)
    if compile:  # read straight into the new model's variables (no second copy)
        load(path, keys="model", into={"model": model})
        return model
    restored = load(path, keys="model")
    restored["model"].pop("optimizer", None)
    fill_model(model, restored["model"], os.fspath(path))
    return model


def fill_model(model: keras.Model, restored: Any, source: str) -> None:
    """Assign a saved model tree to ``model``; every mismatch raises, nothing assigned."""
    template.fill_from(model, restored, source, path=("model",))


def to_json(model: keras.Model) -> str:
    """The architecture alone, as Keras' JSON (``model.to_json()``)."""
    return model.to_json()


def model_from_json(text: str) -> keras.Model:
    """A fresh model (new weights) from :func:`to_json`'s text."""
    return keras.models.model_from_json(text)


def to_yaml(model: keras.Model) -> str:
    """The architecture as YAML (the same document as :func:`to_json`; needs PyYAML)."""
    import yaml

    return yaml.safe_dump(json.loads(model.to_json()), sort_keys=False)


def model_from_yaml(text: str) -> keras.Model:
    """A fresh model from :func:`to_yaml`'s text (safe YAML: plain data only)."""
    import yaml

    return keras.models.model_from_json(json.dumps(yaml.safe_load(text)))
