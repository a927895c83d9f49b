"""Resuming a ``DataLoader`` exactly: mid-epoch, and with random augmentation in workers.

Resuming a DataLoader exactly
-----------------------------
A sampler cannot tell what the training loop has consumed: a ``DataLoader`` with
workers draws indices several batches ahead. :class:`ResumableSampler` therefore
counts batches when :meth:`ResumableSampler.batches` hands them to the loop::

    order = ckpt.DataOrder(len(dataset), batch_size=32, seed=0)
    sampler = ResumableSampler(order)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler,
                        generator=torch.Generator())
    state = {"model": model, "optimizer": opt, "sampler": sampler, "rng": ckpt.RNGState()}
    with ckpt.TrainingLoop(manager, state, total_steps=n) as loop:
        batches = sampler.batches(loader)      # after the loop restored the sampler
        for step in loop:
            inputs, targets = next(batches)

If you shuffle with a ``torch.Generator`` of your own (``RandomSampler(generator=g)``,
``torch.randperm(n, generator=g)``), put ``ckpt.RNGState(g)`` in the state: it is
restored in place. Note that ``RandomSampler`` draws a whole epoch's permutation
when the epoch starts, so it cannot resume mid-epoch; that is what this sampler is for.
Randomness inside dataset workers (augmentation) is reproducible across a resume
only when it is derived from the sample index and epoch, not from worker seeds.

Randomness in workers
---------------------
A worker's own seed depends on which worker loads a sample, and a resumed loader
hands the first batch to worker 0 whichever worker had it before: augmentation
drawn from worker seeds (or from the global RNG inside workers) is not the same
after a resume. The rule: derive every random draw for a sample from
``(seed, epoch, index)``. :class:`SeededDataset` does that::

    def augment(sample, generator):         # draw only from this generator
        image, label = sample
        if torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        return image + 0.1 * torch.randn(image.shape, generator=generator), label

    sampler = ResumableSampler(order, with_epoch=True)   # yields (epoch, index)
    loader = DataLoader(SeededDataset(dataset, augment, seed=0), batch_size=32,
                        sampler=sampler, num_workers=4, generator=torch.Generator())
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ckpt.sampler import DataOrder

__all__ = ["ResumableSampler", "SeededDataset", "sample_generator"]


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A ``torch.Generator`` that depends only on ``(seed, epoch, index)``.

    The same sample in the same epoch gets the same random stream in every run,
    whichever worker (or process) loads it.
    """
    words = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(words[0]) << 32 | int(words[1]))
    return generator


class SeededDataset(Dataset):
    """``dataset`` with ``transform(sample, generator)`` applied, seeded per sample.

    Indexed by the ``(epoch, index)`` pairs a ``ResumableSampler(order,
    with_epoch=True)`` yields; the generator is :func:`sample_generator` of
    ``(seed, epoch, index)``, so augmentation is identical across a resume.
    """

    def __init__(self, dataset: Any, transform: Callable[[Any, torch.Generator], Any], *,
                 seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError("SeededDataset is indexed by (epoch, index) pairs: use it with "
                            "ResumableSampler(order, with_epoch=True)")
        epoch, index = key
        return self.transform(self.dataset[index], sample_generator(self.seed, epoch, index))


# ----------------------------------------------------------------- sampler


class ResumableSampler(Sampler):
    """A ``DataLoader`` sampler over a :class:`~ckpt.DataOrder` that resumes mid-epoch.

    Each ``iter()`` yields the indices of the current epoch not consumed yet, or
    starts the next epoch when this one is used up. Consumption is counted per
    batch handed to the training loop by :meth:`batches` (or :meth:`consume`),
    never per index the loader prefetched, so ``state_dict()`` (the order's
    ``{seed, epoch, position}``) is exactly where an uninterrupted run would be.
    """

    def __init__(self, order: DataOrder, *, with_epoch: bool = False) -> None:
        super().__init__()
        self.order = order
        self.with_epoch = with_epoch  # yield (epoch, index) pairs, for SeededDataset

    def _epoch_end(self) -> int:
        return len(self.order)  # with drop_last, the last full batch's end

    def __iter__(self) -> Iterator[int]:
        if self.order.position >= self._epoch_end():
            state = self.order.state_dict()
            self.order.load_state_dict({**state, "epoch": state["epoch"] + 1, "position": 0})
        rest = self.order.order()[self.order.position:self._epoch_end()].tolist()
        if self.with_epoch:
            epoch = self.order.epoch
            return iter([(epoch, index) for index in rest])
        return iter(rest)

    def __len__(self) -> int:
        """How many indices the next ``iter()`` yields."""
        remaining = self._epoch_end() - self.order.position
        return remaining if remaining > 0 else self._epoch_end()

    def consume(self, batches: int = 1) -> None:
        """Count ``batches`` more batches as used by the training loop."""
        stop = self.order.position + batches * self.order.batch_size
        self.order.position = min(stop, self._epoch_end())

    def batches(self, loader: DataLoader) -> Iterator[Any]:
        """Yield ``loader``'s batches epoch after epoch, for ever, counting each one.

        A batch counts as consumed when it is handed out, so a checkpoint saved
        after the step that used it resumes with the next one.
        """
        self._check_loader(loader)
        while True:
            for batch in loader:
                self.consume()
                yield batch

    def _check_loader(self, loader: DataLoader) -> None:
        order = self.order
        if loader.sampler is not self:
            raise ValueError("the DataLoader must use this sampler: DataLoader(..., sampler=it)")
        if loader.batch_size != order.batch_size or loader.drop_last != order.drop_last:
            raise ValueError(
                f"DataLoader(batch_size={loader.batch_size}, drop_last={loader.drop_last}) "
                f"must match its DataOrder(batch_size={order.batch_size}, "
                f"drop_last={order.drop_last}): batches are counted in the order's size")
        if loader.generator is None:
            raise ValueError(
                "pass generator=torch.Generator() to the DataLoader: without one, every "
                "iter(loader) draws a seed from torch's global RNG, and a resumed run "
                "starts one more iteration than an uninterrupted run, which would shift "
                "dropout and every other global random draw after the resume")

    def state_dict(self) -> dict[str, Any]:
        """The order's ``{"seed", "epoch", "position"}``, position = samples consumed."""
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        self.order.load_state_dict(state)
