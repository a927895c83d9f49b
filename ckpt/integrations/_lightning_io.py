"""``CkptIO``: the checkpoints Lightning writes, as ckpt files (no pickle).

Also the conversion every Lightning checkpoint goes through on its way into a ckpt
tree (:func:`to_tree`: hyper-parameters as plain dicts, or refused) and the
readers :func:`load_checkpoint` and :func:`load_from_checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import CheckpointIO

from ckpt import storage
from ckpt.errors import CheckpointError, UnsupportedTypeError
from ckpt.files import load, save
from ckpt.h5format import is_ckpt_file
from ckpt.tree import encode_tree, keystr

__all__ = ["CkptIO", "load_checkpoint", "load_from_checkpoint", "metadata", "to_tree"]

# the checkpoint keys Lightning fills from save_hyperparameters()
_HPARAM_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


def _plain(value: Any, path: tuple) -> Any:
    """Hyper-parameters as plain containers; modules and other stateful objects refused."""
    if isinstance(value, Mapping) and all(type(k) in (str, int) for k in value):
        # AttributeDict and other dict subclasses: Lightning gives back an AttributeDict
        return {k: _plain(v, (*path, k)) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_plain(v, (*path, i)) for i, v in enumerate(value))
    if hasattr(value, "state_dict") and not isinstance(value, torch.Tensor):
        raise UnsupportedTypeError(
            keystr(path), type(value).__name__,
            "a hyper-parameter must be a plain value; Lightning saves the weights of "
            "modules already: leave it out with self.save_hyperparameters(ignore=[...])")
    return value


def to_tree(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Lightning's checkpoint dict as a ckpt tree (hyper-parameters as plain dicts).

    Raises :class:`~ckpt.UnsupportedTypeError` naming the key path of a value a
    tree cannot hold, before anything is written.
    """
    tree = dict(checkpoint)
    for key in _HPARAM_KEYS:
        if key in tree:
            tree[key] = _plain(tree[key], (key,))
            try:
                encode_tree({key: tree[key]})
            except UnsupportedTypeError as error:
                raise UnsupportedTypeError(
                    error.key, error.type_name,
                    "hyper-parameters are stored as numbers, strings, None, lists, tuples, "
                    "dicts and arrays; leave others out with "
                    "self.save_hyperparameters(ignore=[...]) or pass a plain value") from None
    return tree


def metadata(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What ``ckpt show`` prints for a Lightning checkpoint: versions and progress."""
    return {"lightning": pl.__version__, "epoch": int(checkpoint.get("epoch", 0)),
            "global_step": int(checkpoint.get("global_step", 0))}


def _device(map_location: Any) -> Any:
    # Lightning passes callables and dicts too (torch.load's forms): those leave tensors on CPU
    if isinstance(map_location, (str, torch.device)):
        return map_location
    return None


class CkptIO(CheckpointIO):
    """Lightning checkpoints as crash-safe ckpt files: ``Trainer(plugins=[CkptIO()])``.

    ``ModelCheckpoint`` keeps its file names (``epoch=0-step=100.ckpt``), but each
    file is one HDF5 file written atomically by :func:`ckpt.save` (temporary file,
    fsync, rename), so a crash leaves the previous file or the new one. Loading
    never unpickles: a file ``torch.save`` wrote is refused, not executed.
    ``LightningModule.load_from_checkpoint`` calls ``torch.load`` directly and
    cannot read these files; :func:`load_from_checkpoint` does what it does.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (creating its directory)."""
        if storage_options is not None:
            raise TypeError("CkptIO.save_checkpoint takes no storage_options; got "
                            f"{storage_options!r}")
        location = os.fspath(path)
        if not storage.is_url(location):
            os.makedirs(os.path.dirname(os.path.abspath(location)), exist_ok=True)
        save(location, to_tree(checkpoint), metadata=metadata(checkpoint))

    def load_checkpoint(self, path: Any, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Read a checkpoint :meth:`save_checkpoint` wrote (checksums verified)."""
        return load_checkpoint(path, map_location=map_location)

    def remove_checkpoint(self, path: Any) -> None:
        """Delete the checkpoint file at ``path`` (``ModelCheckpoint``'s ``save_top_k``)."""
        filesystem = get_filesystem(path)
        if filesystem.exists(path):
            filesystem.rm(path, recursive=True)


def load_checkpoint(path: Any, *, map_location: Any = None) -> dict[str, Any]:
    """The Lightning checkpoint dict in a file :class:`CkptIO` wrote.

    ``map_location`` (a device or its name) places the tensors; by default they
    are on CPU, where Lightning moves them to the model's device itself.
    """
    location = os.fspath(path)
    if os.path.isfile(location) and not is_ckpt_file(location):
        raise CheckpointError(
            f"{location} is not a checkpoint CkptIO wrote (a torch.save file?); ckpt never "
            "unpickles: load it without the CkptIO plugin")
    checkpoint: dict[str, Any] = load(location, device=_device(map_location))
    return checkpoint


def load_from_checkpoint(cls: type, path: Any, *, map_location: Any = None,
                         strict: bool | None = None, **kwargs: Any) -> Any:
    """``cls.load_from_checkpoint(path)`` for a file :class:`CkptIO` wrote.

    The module is built from the saved hyper-parameters (``kwargs`` override
    them), its ``on_load_checkpoint`` hook runs and the weights are loaded, as
    Lightning's own method does.
    """
    from lightning.pytorch.core.saving import _load_state

    return _load_state(cls, load_checkpoint(path, map_location=map_location), strict=strict,
                       **kwargs)

