"""The reference numpy workload for ``ckpt``'s "exact resume" demo.

A pure-numpy port of the Keras functional-API seed model (784 -> 64 -> 64 -> 10 MLP
with hand-written gradients), stateful SGD / RMSprop / Adam optimizers and a
built-in, deterministic MNIST-like dataset. The model's ``state_dict()`` is a plain
ckpt state tree, so a ``CheckpointManager`` can save and restore it directly.
"""

from ckpt.demo.data import batch_indices, load_data, make_digits, train_test_split
from ckpt.demo.model import (
    Dense,
    Model,
    load_model,
    make_model,
    model_from_json,
    model_from_yaml,
)
from ckpt.demo.optimizers import SGD, Adam, Optimizer, RMSprop, get_optimizer

__all__ = [
    "Dense",
    "Model",
    "make_model",
    "model_from_json",
    "model_from_yaml",
    "load_model",
    "Optimizer",
    "SGD",
    "RMSprop",
    "Adam",
    "get_optimizer",
    "make_digits",
    "load_data",
    "train_test_split",
    "batch_indices",
]
