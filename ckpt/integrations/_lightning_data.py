"""The train ``DataLoader`` of a ``Trainer.fit``, rebuilt around a resumable sampler.

Lightning builds the train loader itself (from ``train_dataloader()`` or the one
given to ``fit``) and starts iterating it before any callback can act. The
:class:`~ckpt.integrations.lightning.BackupAndRestore` callback therefore swaps it,
in ``on_train_start``, for a copy whose sampler is a :class:`LightningSampler`:
the same dataset, batch size, workers and collate function, the same shuffling
choice, but an order that is a pure function of ``(seed, epoch)`` and a position
counted in batches the loop actually trained on.

The copy is deliberately *not* stateful in Lightning's sense (no
``state_dict``/``load_state_dict`` on the loader): Lightning would then write its
position into every checkpoint's loop state and refuse to resume those checkpoints
with the user's original loader. The position lives in the callback's state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from ckpt.integrations.torch_data import ResumableSampler
from ckpt.sampler import DataOrder

__all__ = ["LightningSampler", "inject_sampler"]

# DataLoader arguments copied to the rebuilt loader (sampler and generator are ours)
_COPIED = ("batch_size", "num_workers", "collate_fn", "pin_memory", "drop_last", "timeout",
           "worker_init_fn", "multiprocessing_context", "persistent_workers",
           "pin_memory_device", "in_order")


class LightningSampler(ResumableSampler):
    """A :class:`~ckpt.integrations.torch.ResumableSampler` that Lightning drives.

    Lightning calls ``set_epoch`` at every epoch's start (as it does for a
    ``DistributedSampler``), so the epoch is Lightning's; ``len()`` is a whole
    epoch's, as Lightning expects of a resumable loader (it counts the batches a
    resumed epoch already had). The loader's generator is reseeded from
    ``(seed, epoch)`` whenever the epoch changes, so that worker seeds do not
    depend on how many times the loader was iterated.
    """

    def __init__(self, order: DataOrder, generator: torch.Generator) -> None:
        super().__init__(order)
        self.generator = generator
        self._reseed()

    def _reseed(self) -> None:
        words = np.random.SeedSequence([self.order.seed, self.order.epoch]).generate_state(
            2, dtype=np.uint32)
        self.generator.manual_seed(int(words[0]) << 32 | int(words[1]))

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless it is the epoch in progress."""
        if epoch != self.order.epoch:
            self.load_state_dict({"seed": self.order.seed, "epoch": epoch, "position": 0})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved ``{seed, epoch, position}``."""
        super().load_state_dict(state)
        self._reseed()

    def __iter__(self) -> Iterator[int]:
        epoch = self.order.epoch
        indices = super().__iter__()  # rolls into the next epoch when this one is used up
        if self.order.epoch != epoch:
            self._reseed()
        return indices

    def __len__(self) -> int:
        return len(self.order)


def _check_loader(loader: Any) -> None:
    """Refuse what cannot be resumed mid-epoch by index order, saying why."""
    if not isinstance(loader, DataLoader):
        raise ValueError(f"BackupAndRestore resumes a torch DataLoader mid-epoch; the train "
                         f"dataloader is a {type(loader).__name__}")
    if isinstance(loader.dataset, IterableDataset):
        raise ValueError("BackupAndRestore cannot resume an IterableDataset mid-epoch (it has "
                         "no indices to skip): use a map-style dataset")
    if type(loader.batch_sampler) is not BatchSampler:
        raise ValueError(f"BackupAndRestore rebuilds the train DataLoader around its own "
                         f"sampler; a custom batch_sampler "
                         f"({type(loader.batch_sampler).__name__}) cannot be rebuilt")
    sampler = loader.sampler
    if type(sampler) is RandomSampler and (sampler.replacement
                                           or sampler.num_samples != len(loader.dataset)):
        raise ValueError("BackupAndRestore replaces RandomSampler by a per-epoch permutation: "
                         "sampling with replacement or num_samples is not supported")
    if type(sampler) not in (RandomSampler, SequentialSampler):
        raise ValueError(f"BackupAndRestore resumes DataLoader(shuffle=True) and "
                         f"DataLoader(shuffle=False); the sampler {type(sampler).__name__} "
                         f"cannot be replaced by a resumable one")


def _rebuilt(loader: DataLoader, sampler: LightningSampler) -> DataLoader:
    kwargs = {name: getattr(loader, name) for name in _COPIED if hasattr(loader, name)}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("persistent_workers", None)
    else:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, sampler=sampler, generator=sampler.generator, **kwargs)


def inject_sampler(trainer: Any, seed: int, state: dict[str, Any] | None) -> LightningSampler:
    """Swap the train loader of ``trainer.fit`` for one with a :class:`LightningSampler`.

    ``state`` (a sampler ``state_dict``) continues a resumed run. Called from
    ``on_train_start``, after Lightning built its loader and before the first batch.
    """
    fit_loop = trainer.fit_loop
    combined = fit_loop._combined_loader
    if combined is None or len(combined.flattened) != 1:
        raise ValueError("BackupAndRestore resumes exactly one train DataLoader")
    loader = combined.flattened[0]
    _check_loader(loader)
    order = DataOrder(len(loader.dataset), batch_size=loader.batch_size, seed=seed,
                      shuffle=type(loader.sampler) is RandomSampler,
                      drop_last=loader.drop_last)
    sampler = LightningSampler(order, torch.Generator())
    if state is not None:
        sampler.load_state_dict(state)
    rebuilt = _rebuilt(loader, sampler)
    if math.ceil(len(order) / order.batch_size) != len(rebuilt):
        raise AssertionError("the rebuilt DataLoader has another length")  # a torch change
    combined.flattened = [rebuilt]
    iter(fit_loop._data_fetcher)  # Lightning iterated the old loader already: start ours
    return sampler
