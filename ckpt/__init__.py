"""ckpt: crash-safe, exact-resume training checkpoints in plain HDF5."""

import logging as _logging

from ckpt._version import __version__
from ckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CorruptCheckpointError,
    LockTimeoutError,
    SaveError,
    StateMismatchError,
    StepExistsError,
    UnsupportedTypeError,
)
from ckpt.files import load, load_metadata, save
from ckpt.loop import TrainingLoop
from ckpt.manager import CheckpointManager
from ckpt.policies import AnyOf, KeepAll, KeepBest, KeepEvery, KeepLast, Policy, StepInfo
from ckpt.rng import RNGState
from ckpt.sampler import DataOrder

__all__ = [
    "__version__",
    "save",
    "load",
    "load_metadata",
    "CheckpointManager",
    "KeepLast",
    "KeepEvery",
    "KeepBest",
    "KeepAll",
    "AnyOf",
    "Policy",
    "StepInfo",
    "RNGState",
    "DataOrder",
    "TrainingLoop",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "StateMismatchError",
    "UnsupportedTypeError",
    "StepExistsError",
    "LockTimeoutError",
    "SaveError",
    "CheckpointPermissionError",
]

# a library logs, the application decides where it goes
_logging.getLogger("ckpt").addHandler(_logging.NullHandler())
