"""A built-in, deterministic stand-in for MNIST: 28x28 "digits" in ten classes.

No downloads: each class has a prototype drawn from a few thick strokes generated
from a fixed seed, and each sample is its class prototype shifted by a few pixels,
scaled in intensity, overlaid with a faint stroke pattern of another class and
covered in noise. The prototypes never depend on the sample seed, so train and
test sets drawn with different seeds are the same task. The result is learnable
by a small MLP within a few hundred steps, but not solved in the first few.
"""

from __future__ import annotations

import numpy as np

__all__ = ["IMAGE_SIZE", "NUM_CLASSES", "make_digits", "train_test_split", "load_data",
           "batch_indices"]

IMAGE_SIZE = 28
NUM_CLASSES = 10
# fixed, so that every dataset (whatever its sample seed) shares the same classes
_PROTOTYPE_SEED = 20240611
_MAX_SHIFT = 3
_STROKES_PER_CLASS = 3
_STROKE_WIDTH = 1.3
_NOISE_STD = 0.25
_DISTRACTOR_WEIGHT = 0.45


def _prototypes() -> np.ndarray:
    """Ten float32 [28, 28] patterns in [0, 1], each a union of thick line segments."""
    rng = np.random.default_rng(_PROTOTYPE_SEED)
    rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    protos = np.zeros((NUM_CLASSES, IMAGE_SIZE, IMAGE_SIZE))
    for label in range(NUM_CLASSES):
        # endpoints stay away from the border so shifted samples are not clipped
        ends = rng.uniform(6, IMAGE_SIZE - 7, size=(_STROKES_PER_CLASS, 2, 2))
        for (r0, c0), (r1, c1) in ends:
            dist2 = _segment_distance2(rows, cols, r0, c0, r1, c1)
            protos[label] = np.maximum(protos[label], np.exp(-dist2 / (2 * _STROKE_WIDTH**2)))
    return protos.astype(np.float32)


def _segment_distance2(rows: np.ndarray, cols: np.ndarray, r0: float, c0: float,
                       r1: float, c1: float) -> np.ndarray:
    """Squared distance from every pixel centre to the segment (r0, c0)-(r1, c1)."""
    dr, dc = r1 - r0, c1 - c0
    length2 = max(dr * dr + dc * dc, 1e-12)
    t = np.clip(((rows - r0) * dr + (cols - c0) * dc) / length2, 0.0, 1.0)
    return (rows - (r0 + t * dr)) ** 2 + (cols - (c0 + t * dc)) ** 2


def _shifted(images: np.ndarray, labels: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``images[labels]`` each moved by its (row, col) shift, zero-filled, in one gather."""
    pad = _MAX_SHIFT
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    base = np.arange(IMAGE_SIZE)
    rows = base[None, :] + pad - shifts[:, :1]
    cols = base[None, :] + pad - shifts[:, 1:]
    return padded[labels[:, None, None], rows[:, :, None], cols[:, None, :]]


def make_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples: ``x`` float32 [n, 784] in [0, 1] and ``y`` int64 [n] in 0..9.

    Deterministic for a given ``(n, seed)``; classes are balanced in expectation.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    protos = _prototypes()
    y = rng.integers(0, NUM_CLASSES, size=n, dtype=np.int64)
    shifts = rng.integers(-_MAX_SHIFT, _MAX_SHIFT + 1, size=(n, 2))
    images = _shifted(protos, y, shifts) * rng.uniform(0.5, 1.0, size=(n, 1, 1))
    # a faint pattern of some other class makes a nearest-prototype guess unreliable
    other = (y + rng.integers(1, NUM_CLASSES, size=n)) % NUM_CLASSES
    other_shifts = rng.integers(-_MAX_SHIFT, _MAX_SHIFT + 1, size=(n, 2))
    weight = rng.uniform(0.0, _DISTRACTOR_WEIGHT, size=(n, 1, 1))
    images = images + weight * _shifted(protos, other, other_shifts)
    images = images + rng.normal(0.0, _NOISE_STD, size=images.shape)
    x = np.clip(images, 0.0, 1.0).astype(np.float32).reshape(n, IMAGE_SIZE * IMAGE_SIZE)
    return x, y


def train_test_split(x: np.ndarray, y: np.ndarray, n_test: int
                     ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The last ``n_test`` samples as the test set (samples are already i.i.d.)."""
    if not 0 <= n_test <= len(x):
        raise ValueError(f"n_test must be in [0, {len(x)}], got {n_test}")
    cut = len(x) - n_test
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def load_data(n_train: int = 6000, n_test: int = 1000, seed: int = 0
              ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_test, y_test))``, like ``keras.datasets.mnist.load_data``."""
    x, y = make_digits(n_train + n_test, seed)
    return train_test_split(x, y, n_test)


def batch_indices(step: int, n: int, batch_size: int, seed: int = 0) -> np.ndarray:
    """Indices of the samples in training batch ``step``, shuffled once per epoch.

    A pure function of its arguments: a resumed run needs only its step counter to
    see exactly the batches it would have seen (no sampler state to checkpoint).
    The last partial batch of each epoch is dropped so every batch has the same size.
    """
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n})")
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[position * batch_size:(position + 1) * batch_size]
