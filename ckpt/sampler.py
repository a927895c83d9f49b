"""``DataOrder``: a resumable, deterministic per-epoch shuffle of sample indices.

Epoch ``e`` is the permutation drawn from ``np.random.default_rng([seed, e])``, so
it is a pure function of (seed, epoch) and the whole position in the data is three
ints: a resumed run sees exactly the batches an uninterrupted run would have seen,
mid-epoch included.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["DataOrder"]


class DataOrder:
    """Index batches over ``size`` samples, reshuffled each epoch, resumable.

    ``next_batch()`` hands out the next ``batch_size`` indices and rolls over into
    the next epoch; iterating yields single indices of the rest of the current
    epoch (so it also serves as a ``torch.utils.data`` sampler with
    ``num_workers=0``). Its ``state_dict`` is ``{seed, epoch, position}``.
    """

    def __init__(self, size: int, *, batch_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False) -> None:
        if size < 1 or batch_size < 1:
            raise ValueError(f"DataOrder needs size >= 1 and batch_size >= 1, got "
                             f"{size} and {batch_size}")
        if drop_last and batch_size > size:
            raise ValueError(f"batch_size {batch_size} > size {size} with drop_last")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._order: np.ndarray | None = None

    def order(self) -> np.ndarray:
        """The index permutation of the current epoch."""
        if self._order is None:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
            else:
                self._order = np.arange(self.size)
        return self._order

    def _end(self) -> int:
        # with drop_last the tail that cannot fill a batch is never handed out
        return self.size - self.size % self.batch_size if self.drop_last else self.size

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self._order = None

    def next_batch(self) -> np.ndarray:
        """The next batch of indices; a new epoch starts when this one is used up."""
        if self.position >= self._end():
            self._next_epoch()
        stop = min(self.position + self.batch_size, self._end())
        batch = self.order()[self.position:stop]
        self.position = stop
        return batch

    def __iter__(self) -> Iterator[int]:
        if self.position >= self._end():
            self._next_epoch()
        while self.position < self._end():
            index = int(self.order()[self.position])
            self.position += 1
            yield index

    def __len__(self) -> int:
        return self._end()

    def state_dict(self) -> dict[str, Any]:
        """``{"seed", "epoch", "position"}``: all it takes to continue exactly."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = None
