"""``BackupAndRestore``: checkpoints inside ``Trainer.fit`` that resume mid-epoch, exactly.

Lightning restores what its checkpoint dict holds (model, optimizers, schedulers,
precision plugin, callbacks, loop counters) through its own connector; this
callback hands it the manager's newest checkpoint, adds the data position and the
RNG streams, and picks the moments to save so that Lightning's restart logic
continues exactly where the saved run was:

* after an optimizer step, in ``on_train_batch_end`` (what Lightning's restart
  logic calls ``RESTARTED_ON_TRAIN_BATCH_END``), unless Lightning validates right
  after that batch: then at the validation's end (``RESTARTED_ON_LAST``), because
  a resume from the batch itself would skip that validation;
* the last step at its batch boundary too, never in ``on_train_end``, where
  Lightning has already counted a stopped epoch as complete.

RNG streams are put back as the first batch of the resumed run starts, after
everything Lightning does before training (sanity check, data set-up) has drawn.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ckpt._signals import StopFlag
from ckpt.manager import CheckpointManager
from ckpt.rng import RNGState

from ._lightning_data import LightningSampler, inject_sampler
from ._lightning_io import metadata, to_tree

__all__ = ["BackupAndRestore"]

log = logging.getLogger("ckpt")

_NOT_RESUMABLE = "You're resuming from a checkpoint that ended before the epoch ended"


def _scalar_metrics(trainer: Any) -> dict[str, float]:
    """The trainer's logged scalars (``loss``, ``val_loss``) for retention by metric."""
    metrics = {}
    for name, value in trainer.callback_metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            metrics[name] = float(value)
        elif isinstance(value, (int, float, np.number)):
            metrics[name] = float(value)
    return metrics


def _last_step(trainer: Any) -> bool:
    """Whether fit ends after this batch: a stop, ``max_steps``, the last epoch's end."""
    if trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step:
        return True
    last_epoch = trainer.max_epochs is not None and trainer.max_epochs >= 0 and (
        trainer.current_epoch >= trainer.max_epochs - 1)
    return bool(last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


class BackupAndRestore(Callback):
    """Save checkpoints during ``Trainer.fit`` and resume from the newest one, exactly.

    Args:
        manager: where checkpoints go; its ``keep`` applies, and its ``save_every``
            and ``save_every_seconds`` unless ``every_n_train_steps`` is given. The step is
            ``trainer.global_step`` (optimizer steps; with gradient accumulation,
            saves happen only after an optimizer step).
        every_n_train_steps: save every that many optimizer steps (None: the
            manager's schedule).
        handle_signals: on SIGTERM/SIGINT, save after the current optimizer step
            and stop ``fit`` (``preempted`` is True; ``stop_signal`` says which).
        seed: the shuffle seed of the train data order (None: ``torch.initial_seed()``
            when the run starts, so ``seed_everything(n)`` decides it); a resumed run
            keeps the saved one.

    The train DataLoader (``shuffle=True`` or ``False`` over a map-style dataset) is
    rebuilt around a resumable sampler in ``on_train_start``. An explicit
    ``fit(ckpt_path=...)`` wins over the manager's newest checkpoint. One process
    (tested on CPU); the last step is always saved.
    """

    def __init__(self, manager: CheckpointManager, *, every_n_train_steps: int | None = None,
                 handle_signals: bool = True, seed: int | None = None) -> None:
        super().__init__()
        if every_n_train_steps is not None and not (type(every_n_train_steps) is int
                                                    and every_n_train_steps >= 1):
            raise ValueError(f"every_n_train_steps must be None or an int >= 1, got "
                             f"{every_n_train_steps!r}")
        self.manager = manager
        self.every_n_train_steps = every_n_train_steps
        self.handle_signals = handle_signals
        self.seed = seed
        self.preempted = False
        self.resumed_from: int | None = None
        self.sampler: LightningSampler | None = None
        self._stop = StopFlag("after this optimizer step")
        self._data_state: dict | None = None
        self._saved_rng: dict | None = None
        self._last_step = 0  # global_step after the previous batch
        self._last_saved: int | None = None
        self._pending: int | None = None  # a save waiting for the validation that follows
        self._quiet: Any = None
        self._trainer: Any = None

    @property
    def stop_signal(self) -> int | None:
        """The signal that stopped ``fit`` (exit with ``128 + stop_signal``), or None."""
        return self._stop.signal if self.preempted else None

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Data position and RNG streams: saved in every Lightning checkpoint."""
        data = None
        if self.sampler is not None:
            # Lightning's own count of the epoch's batches, so that a ModelCheckpoint
            # that saves before this callback's hook has run gets the same position
            batches = self._trainer.fit_loop.epoch_loop.batch_progress.current.processed
            order = self.sampler.order
            data = {**order.state_dict(),
                    "position": min(batches * order.batch_size, len(order))}
        return {"data": data, "rng": RNGState().state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved position and RNG streams until training starts."""
        self._data_state = state_dict.get("data")
        self._saved_rng = state_dict.get("rng")

    # -------------------------------------------------------- callbacks

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Check the set-up; hand the newest checkpoint to Lightning's restore."""
        if stage != "fit":
            return
        self.preempted, self.resumed_from, self._pending = False, None, None
        self._stop.signal = None
        self._data_state = self._saved_rng = None  # Lightning's restore may set them next
        if trainer.world_size > 1:
            raise NotImplementedError("BackupAndRestore runs in one process for now")
        if trainer.reload_dataloaders_every_n_epochs:
            raise ValueError("BackupAndRestore keeps one train DataLoader for the whole fit: "
                             "reload_dataloaders_every_n_epochs is not supported")
        hparams = {"hyper_parameters": dict(pl_module.hparams)}
        if trainer.datamodule is not None:
            hparams["datamodule_hyper_parameters"] = dict(trainer.datamodule.hparams)
        to_tree(hparams)  # refuse now, not at step N
        self._trainer = trainer
        # last, after the callbacks that stop training (Timer for max_time, EarlyStopping)
        # and after ModelCheckpoint: a stop they ask for in a hook is seen in the same hook
        trainer.callbacks = [c for c in trainer.callbacks if c is not self] + [self]
        if self.manager.latest_step() is None:
            return
        restored = self.manager.restore()
        self.resumed_from = self.manager.last_restored_step
        # Lightning's own restore (model, callbacks, loops, optimizers, precision
        # plugin, schedulers, with every on_load_checkpoint hook) reads the checkpoint
        # its connector has loaded; fit() without ckpt_path loads none and leaves this
        # one in place, an explicit ckpt_path replaces it.
        trainer._checkpoint_connector._loaded_checkpoint = restored
        for step in self.manager.step_numbers():
            if step > self.resumed_from:
                self.manager.set_aside(step)  # damaged newer steps would block their saves

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Put in the resumable data; take SIGTERM/SIGINT over from Lightning."""
        if trainer.ckpt_path:  # fit(ckpt_path=...) was given: that file was restored
            self.resumed_from = None
            for step in self.manager.step_numbers():
                if step > trainer.global_step:  # another future: kept aside, not deleted
                    self.manager.set_aside(step)
        state = self._data_state
        if state is None and trainer.fit_loop.epoch_loop.batch_progress.current.completed:
            warnings.warn("ckpt: this checkpoint holds no data position (BackupAndRestore did "
                          "not write it): the interrupted epoch's data starts again from its "
                          "first batch", stacklevel=2)
        seed = self.seed if self.seed is not None else torch.initial_seed()
        self.sampler = inject_sampler(trainer, seed if state is None else int(state["seed"]),
                                      state)
        self._last_step = trainer.global_step
        self._last_saved = trainer.global_step if self.resumed_from is not None else None
        if self.resumed_from is not None:
            log.info("resumed from step %d", self.resumed_from)
        # Lightning warns about mid-epoch resumes because it cannot skip the data; we do
        self._quiet = warnings.catch_warnings()
        self._quiet.__enter__()
        warnings.filterwarnings("ignore", message=_NOT_RESUMABLE)
        if self.handle_signals:
            # after Lightning's own handlers (fit registers them after setup), so that
            # it does not end fit from inside the step before this callback saved it
            self._stop.install()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        """Put the RNG streams back at the moment the uninterrupted run was at."""
        if self._saved_rng is not None:
            RNGState().load_state_dict(self._saved_rng)
            self._saved_rng = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """After an optimizer step: save when due, at the last step, or after a signal."""
        step = trainer.global_step
        if step == self._last_step:  # accumulating gradients: nothing to save yet
            return
        self._last_step = step
        if not (self._stop.signal is not None or self._due(step) or _last_step(trainer)):
            return
        if self._validation_follows(trainer):
            # Lightning skips that validation on a resume from this point; saving at
            # its end instead is what its restart logic expects (RESTARTED_ON_LAST)
            self._pending = step
        else:
            self._save_now(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Do the save that waited for this validation, or save a stop asked for in it."""
        if trainer.sanity_checking:
            return
        stopping = trainer.should_stop and self._last_saved != trainer.global_step
        if self._pending is not None or stopping:  # EarlyStopping stops here, before us
            self._pending = None
            self._save_now(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Save the last step if no hook did; put back signal handlers and warning filter."""
        if trainer.global_step > 0 and self._last_saved != trainer.global_step:
            # a stop asked for at an epoch's end (after the last save point): Lightning
            # has counted the epoch as complete, and so does this checkpoint
            self._save(trainer)
        self._finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Put back the signal handlers; wait for a save in progress."""
        self._finish()

    # ------------------------------------------------------------ saving

    def _due(self, step: int) -> bool:
        if self.every_n_train_steps is not None:
            return step % self.every_n_train_steps == 0
        return self.manager.should_save(step)

    @staticmethod
    def _validation_follows(trainer: Any) -> bool:
        """Whether Lightning validates after this batch, not counting a stop's validation.

        A stop (``should_stop``) makes Lightning validate once more; a run that did
        not stop would not, so that validation must come after the save.
        """
        stop, trainer.should_stop = trainer.should_stop, False
        try:
            epoch_loop = trainer.fit_loop.epoch_loop
            return bool(epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
        finally:
            trainer.should_stop = stop

    def _save_now(self, trainer: Any) -> None:
        self._save(trainer)
        if self._stop.signal is not None:
            self.preempted = True
            trainer.should_stop = True
            log.warning("preempted: saved step %d and stopped", trainer.global_step)

    def _save(self, trainer: Any) -> None:
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        step = trainer.global_step
        if self.manager.save(step, to_tree(checkpoint), metrics=_scalar_metrics(trainer),
                             metadata=metadata(checkpoint), force=True):
            self._last_saved = step

    def _finish(self) -> None:
        self._stop.restore()
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None
        self.manager.wait_until_finished()

