"""``ckpt export DIR STEP OUT.weights.h5|OUT.keras``: Keras' own files from a checkpoint.

The checkpoint must hold a Keras model's config (BackupAndRestore and
:func:`~ckpt.integrations.keras.save_model` record it in the metadata): the model
is rebuilt from it, filled from the step, and written by Keras itself
(``model.save_weights`` / ``model.save``), so Keras loads the result.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ckpt import fsutil
from ckpt.errors import CheckpointError

__all__ = ["export_keras"]


def _import_keras() -> Any:
    # Keras picks its backend at import (tensorflow by default): choose an installed one
    if "KERAS_BACKEND" not in os.environ and "keras" not in os.sys.modules:
        for backend in ("jax", "torch", "tensorflow"):
            if importlib.util.find_spec(backend) is not None:
                os.environ["KERAS_BACKEND"] = backend
                break
    try:
        import keras
    except ImportError as error:
        raise CheckpointError(f"exporting to a Keras format needs keras ({error})") from None
    return keras


def export_keras(directory: Path | str, step: int, out: Path, fmt: str) -> tuple[int, int]:
    """Write ``out`` (``weights.h5`` or ``keras``); ``(variables, bytes)`` written."""
    _import_keras()
    from ckpt.integrations._keras_saving import build_model, fill_model
    from ckpt.manager import CheckpointManager

    manager = CheckpointManager(directory)
    metadata = manager.info(step).metadata
    model = build_model(metadata if isinstance(metadata, dict) else {})
    key = metadata.get("key")
    restored = manager.restore(step, keys=key) if key else manager.restore(step)
    fill_model(model, restored[key] if key else restored, str(directory))
    suffix = ".weights.h5" if fmt == "weights.h5" else ".keras"
    tmp = out.with_name(fsutil.tmp_name(out.name[:-len(suffix)]) + suffix)
    try:
        if fmt == "weights.h5":
            model.save_weights(tmp)
        else:
            model.save(tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    variables = list(model.variables) + list(model.optimizer.variables if model.optimizer
                                             else [])
    return len(variables), sum(int(v.numpy().nbytes) if hasattr(v, "numpy") else 0
                               for v in variables)
