"""Lightning: crash-safe checkpoint files and exact mid-epoch resume inside ``Trainer.fit``.

Two pieces, usable apart or together:

* :class:`CkptIO`, a Lightning ``CheckpointIO`` plugin: every checkpoint the
  ``Trainer`` and ``ModelCheckpoint`` write becomes one ckpt HDF5 file, written
  atomically, without pickle; ``trainer.fit(ckpt_path=...)`` reads it back.
* :class:`BackupAndRestore`, a callback around a :class:`ckpt.CheckpointManager`:
  it saves every N optimizer steps and on SIGTERM/SIGINT, and the next ``fit()``
  of the same script continues mid-epoch with model, optimizers, schedulers,
  precision plugin, callbacks, Lightning's loop counters, RNG streams and data
  position restored, so that it ends bit for bit where an uninterrupted run ends.

What a checkpoint holds is Lightning's own checkpoint dict (``state_dict``,
``optimizer_states``, ``lr_schedulers``, ``loops``, ``callbacks``, the precision
plugin's state, ``hyper_parameters`` ...), stored as a ckpt tree: key paths read
``state_dict/'layer.weight'`` or ``optimizer_states/0/state/0/exp_avg``.

Hyper-parameters are stored as they are when a tree can hold them (numbers,
strings, None, lists, tuples, dicts, arrays). Anything else (a loss object, an
``nn.Module``, a ``Path``) is refused before anything is written, with an
:class:`~ckpt.UnsupportedTypeError` naming the key path: a checkpoint that
silently lacked a hyper-parameter would rebuild a different model later.
Lightning already stores a module's weights; leave such values out with
``self.save_hyperparameters(ignore=[...])``.
"""

from __future__ import annotations

from ckpt.integrations._lightning_fit import BackupAndRestore
from ckpt.integrations._lightning_io import (
    CkptIO,
    load_checkpoint,
    load_from_checkpoint,
    to_tree,
)

__all__ = ["CkptIO", "BackupAndRestore", "load_checkpoint", "load_from_checkpoint", "to_tree"]
