"""``BackupAndRestore``: checkpoints inside ``model.fit`` that resume mid-epoch, exactly.

Keras' own ``BackupAndRestore`` resumes at an epoch boundary: the batches of the
interrupted epoch are done again from its start. Here the data comes from
:meth:`BackupAndRestore.dataset`, a ``keras.utils.PyDataset`` whose batch ``i``
of epoch ``e`` is a pure function of ``(seed, e, i)`` (a :class:`ckpt.DataOrder`
shuffle), so a resumed run skips exactly the batches already trained on, even
though Keras prefetches batches ahead (the JAX backend does).

RNG streams go back at the moment that matches the uninterrupted run: at the
epoch's start for a resume on an epoch boundary, or else as the first batch is
served, after Keras has started the epoch's data iterator (``fit(shuffle=True)``
draws from Python's ``random`` then, as the uninterrupted run did before it
saved). On the torch backend the data goes through a ``DataLoader`` with its own
generator, so that Keras' iterators never draw from torch's global one.

How an epoch is cut short: Keras asks the dataset's length before the callback
has restored anything, so the resumed epoch's dataset simply ends early (Keras
then ends the epoch, with a warning this callback silences), and the following
epochs are whole again.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import keras
import numpy as np

from ckpt._signals import StopFlag
from ckpt.manager import CheckpointManager
from ckpt.rng import RNGState
from ckpt.sampler import DataOrder

from ._keras_saving import model_metadata
from ._keras_state import ModelState, _host

__all__ = ["BackupAndRestore", "ResumableDataset"]

log = logging.getLogger("ckpt")
_RAN_OUT = "Your input ran out of data"


def _metric_variables(model: Any) -> dict[str, Any]:
    """The running totals of the model's metrics, by path (``loss/total``)."""
    out: dict[str, Any] = {}
    for variable in model.metrics_variables:
        key, number = variable.path, 1
        while key in out:
            key, number = f"{variable.path}_{number}", number + 1
        out[key] = variable
    return out


def _metric_values(model: Any) -> dict[str, Any]:
    return {path: _host(v) for path, v in _metric_variables(model).items()}


def _metadata_or_none(model: Any) -> dict | None:
    """The model's config for ``ckpt export`` to ``.keras``; None when it has none."""
    try:
        return model_metadata(model, key="model")
    except (NotImplementedError, TypeError, ValueError) as error:
        log.info("no Keras config in the checkpoints (%s)", error)
        return None


class ResumableDataset(keras.utils.PyDataset):
    """``(x, y)`` in batches, reshuffled per epoch by a :class:`ckpt.DataOrder`.

    Made by :meth:`BackupAndRestore.dataset`; the callback tells it which epoch
    runs and how many of its samples were already used.
    """

    def __init__(self, x: Any, y: Any, order: DataOrder) -> None:
        super().__init__()
        self.x, self.y, self.order = x, y, order
        self.start = 0  # samples of the current epoch done before this run
        self.served = 0  # batches handed out in this epoch (this run)
        self.before_first_batch: Any = None  # called once, as the first batch is served

    def begin_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve ``epoch``, starting after its first ``start`` samples."""
        self.order.load_state_dict({"seed": self.order.seed, "epoch": epoch,
                                    "position": start})
        self.start = start
        self.served = 0

    @property
    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch."""
        return math.ceil(len(self.order) / self.order.batch_size)

    def __len__(self) -> int:
        return math.ceil((len(self.order) - self.start) / self.order.batch_size)

    def position_after(self, batch: int) -> int:
        """Samples of the epoch used once batch ``batch`` (0-based, this run) is done."""
        return min(self.start + (batch + 1) * self.order.batch_size, len(self.order))

    def __getitem__(self, index: int) -> tuple:
        # Batches are served in the order they are asked for, whatever the index:
        # fit(shuffle=True) (the default) permutes the indices it asks for with
        # Python's random, and prefetching asks ahead; either way the k-th request
        # of an epoch is the k-th batch trained on.
        begin = self.start + self.served * self.order.batch_size
        if begin >= len(self.order):
            raise IndexError(index)
        if self.before_first_batch is not None:
            hook, self.before_first_batch = self.before_first_batch, None
            hook()
        self.served += 1
        picked = self.order.order()[begin:begin + self.order.batch_size]
        if self.y is None:
            return (self.x[picked],)
        return self.x[picked], self.y[picked]


def _snapshot(model: Any) -> dict[int, tuple[Any, Any]]:
    """Every model and optimizer variable with a host copy of its value."""
    variables = list(model.variables)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return {id(v): (v, np.array(keras.ops.convert_to_numpy(v.value))) for v in variables}


def _put_back(snapshot: dict[int, tuple[Any, Any]]) -> None:
    """Undo what Keras' TF trainer changed after the epoch's data ran out.

    An epoch that runs out of data (a resumed one: Keras counted a whole epoch's
    batches) ends, on the TensorFlow backend, with one more call of the train
    function whose stateful ops that do not wait for the data still run: the
    optimizer's ``iteration`` and the seed generators' state advance (plain Keras:
    6 batches, 7 iterations; weights, slots and metrics do not move). Left so, every
    later step would differ from an uninterrupted run's.
    """
    for variable, value in snapshot.values():
        if not np.array_equal(np.asarray(keras.ops.convert_to_numpy(variable.value)), value):
            variable.assign(value)


def _torch_loader(data: ResumableDataset) -> Any:
    """``data`` as a torch ``DataLoader`` that never draws from torch's global RNG.

    Keras wraps a PyDataset in a DataLoader of its own, and every ``iter()`` of
    that one draws a seed from torch's global generator, which unseeded dropout
    also draws from. Keras starts those iterators at moments that differ between
    an uninterrupted and a resumed run (at an epoch's end, ahead of time), so the
    global stream would differ after a resume. A loader with its own generator
    leaves the global stream to the model.
    """
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class Batches(IterableDataset):
        def __iter__(self) -> Any:
            return (data[i] for i in range(len(data)))

        def __len__(self) -> int:
            return data.batches_per_epoch

    return DataLoader(Batches(), batch_size=None, generator=torch.Generator())


class BackupAndRestore(keras.callbacks.Callback):
    """Save checkpoints during ``model.fit`` and resume from the newest one.

    Args:
        manager: where checkpoints go; its ``save_every`` (in batches) and ``keep``
            apply. ``step`` is the number of completed batches.
        save_freq: ``None`` follows the manager's schedule; an int saves every that
            many batches; ``"epoch"`` saves at each epoch's end.
        handle_signals: on SIGTERM/SIGINT, save at the next batch boundary and stop
            training (``fit`` returns; ``preempted`` is True).

    The model's weights and optimizer, its metrics' running totals, the data
    position and every RNG stream (Python, numpy, torch) are saved; batch logs go
    into each checkpoint's metrics. The last batch is always saved.
    """

    def __init__(self, manager: CheckpointManager, *, save_freq: int | str | None = None,
                 handle_signals: bool = True) -> None:
        super().__init__()
        if not (save_freq is None or save_freq == "epoch"
                or (type(save_freq) is int and save_freq >= 1)):
            raise ValueError(f"save_freq must be None, 'epoch' or an int >= 1, got "
                             f"{save_freq!r}")
        self.manager = manager
        self.save_freq = save_freq
        self.handle_signals = handle_signals
        self.data: ResumableDataset | None = None
        self.step = 0
        self.preempted = False
        self.resumed_from: int | None = None
        self._epoch = 0
        self._resume_epoch: tuple[int, int] | None = None  # (epoch, samples done)
        self._saved_metrics: list | None = None
        self._stop = StopFlag("after this batch")
        self._quiet: Any = None
        self._last_saved: int | None = None
        self._restoring = False
        self._metadata: dict | None = None
        self._saved_rng: dict | None = None
        self._runs_out = False  # this epoch was resumed: it ends by running out of data
        self._before_overrun: dict[int, tuple[Any, Any]] | None = None

    def dataset(self, x: Any, y: Any = None, *, batch_size: int = 32, seed: int = 0,
                shuffle: bool = True) -> Any:
        """The data for ``model.fit``: shuffled per epoch, resumable mid-epoch.

        A :class:`ResumableDataset` (a ``keras.utils.PyDataset``); on the torch
        backend, wrapped in a ``DataLoader`` with a generator of its own.
        """
        order = DataOrder(len(x), batch_size=batch_size, seed=seed, shuffle=shuffle)
        self.data = ResumableDataset(x, y, order)
        if keras.backend.backend() == "torch":
            return _torch_loader(self.data)
        return self.data

    # ------------------------------------------------------------ state

    def _state(self) -> dict[str, Any]:
        model = self.model  # on JAX this also syncs the training state into the variables
        state: dict[str, Any] = {
            "model": ModelState(model),
            # {} in the template accepts whatever was saved: a fresh model may not have
            # built its compile metrics yet; they are put back in on_epoch_begin
            "metrics": {} if self._restoring else _metric_values(model),
            "progress": {"step": self.step, "epoch": self._epoch},
            "rng": {} if self._restoring else RNGState().state_dict(),
        }
        if self.data is not None:
            state["data"] = self.data.order.state_dict()
        return state

    def _save(self, logs: dict | None, force: bool) -> None:
        if self._last_saved == self.step:
            return
        metrics = {name: float(value) for name, value in (logs or {}).items()
                   if np.size(value) == 1}
        if self.manager.save(self.step, self._state(), metrics=metrics, force=force,
                             metadata=self._metadata):
            self._last_saved = self.step

    def _due(self) -> bool:
        if self.save_freq == "epoch":
            return False
        if isinstance(self.save_freq, int):
            return self.step % self.save_freq == 0
        return self.manager.should_save(self.step)

    # -------------------------------------------------------- callbacks

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Restore the newest checkpoint (if any) and set up signal handling."""
        if self.handle_signals:
            self._stop.install()
        self._metadata = _metadata_or_none(self.model)
        if self.manager.latest_step() is None:
            return
        self._restoring = True
        try:
            template = self._state()
        finally:
            self._restoring = False
        restored = self.manager.restore(into=template)
        self.resumed_from = self.manager.last_restored_step
        self.step = self.resumed_from
        self._last_saved = self.step
        self._saved_metrics = restored["metrics"]
        self._saved_rng = restored["rng"]
        self._resume_at(restored)
        log.info("resumed from step %d (epoch %d)", self.step, self._epoch)

    def _resume_at(self, restored: dict) -> None:
        epoch = int(restored["progress"]["epoch"])
        data = restored.get("data")
        if self.data is not None and data is not None:
            position = int(data["position"])
            if position >= len(self.data.order):
                epoch, position = epoch + 1, 0
            self._resume_epoch = (epoch, position)
        elif self.step > 0:
            epoch += 1  # without the dataset, only whole epochs can be resumed
            warnings.warn("ckpt: resuming at the start of epoch "
                          f"{epoch}: pass the data through BackupAndRestore.dataset() "
                          "for an exact mid-epoch resume", stacklevel=3)
        self._epoch = epoch
        self.model._initial_epoch = epoch  # what Keras' own BackupAndRestore sets

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Point the dataset at this epoch; put back the interrupted epoch's metrics."""
        self._epoch = epoch
        start = 0
        if self._resume_epoch is not None and self._resume_epoch[0] == epoch:
            start = self._resume_epoch[1]
            if start and self.data is not None:
                self._resume_mid_epoch()
                self.data.before_first_batch = self._put_back_rng
                self._runs_out = keras.backend.backend() == "tensorflow"
                self._quiet = warnings.catch_warnings()
                self._quiet.__enter__()
                warnings.filterwarnings("ignore", message=_RAN_OUT)
        self._resume_epoch = None
        if not start:
            self._put_back_rng()
        if self.data is not None:
            self.data.begin_epoch(epoch, start)

    def _resume_mid_epoch(self) -> None:
        # fit reset the metrics after on_train_begin: the epoch's totals go back now
        saved = self._saved_metrics or {}
        for path, variable in _metric_variables(self.model).items():
            if path in saved:
                variable.assign(saved[path])

    def _put_back_rng(self) -> None:
        if self._saved_rng is not None:
            RNGState().load_state_dict(self._saved_rng)
            self._saved_rng = None



    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Count the batch; save when due, or now and stop after a signal."""
        self.step += 1
        if self.data is not None:
            self.data.order.position = self.data.position_after(batch)
            if self._runs_out and self.data.order.position >= len(self.data.order):
                self._before_overrun = _snapshot(self.model)
        if self._stop.signal is not None:
            self._save(logs, force=True)
            self.preempted = True
            self.model.stop_training = True
            log.warning("preempted: saved step %d and stopped", self.step)
        elif self._due():
            self._save(logs, force=False)
        self._logs = logs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Save at the epoch's end with ``save_freq="epoch"``."""
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None
        if self._before_overrun is not None:
            _put_back(self._before_overrun)
        self._runs_out, self._before_overrun = False, None
        if self.save_freq == "epoch" and not self.preempted:
            self._save(logs, force=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        """Save the last step, restore the signal handlers, wait for a pending save."""
        if not self.preempted and self.step > 0:
            self._save(logs or getattr(self, "_logs", None), force=True)
        self._stop.restore()
        self.manager.wait_until_finished()

