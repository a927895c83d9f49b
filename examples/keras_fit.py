"""The seed model of the Keras guides in ``model.fit``, resumable mid-epoch after any kill.

    KERAS_BACKEND=jax python examples/keras_fit.py --dir /tmp/keras-run --epochs 4

Kill it at any moment (Ctrl-C, SIGTERM, even SIGKILL) and run the same command
again: ``BackupAndRestore`` continues after the newest checkpoint, mid-epoch
included, and the final weights and optimizer variables are bit for bit those of
an uninterrupted run.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402

import ckpt  # noqa: E402
from ckpt.demo import make_digits  # noqa: E402
from ckpt.integrations.keras import BackupAndRestore  # noqa: E402


def make_model() -> keras.Model:
    """``digits(784) -> Dense(64) -> Dropout -> Dense(64) -> Dense(10)``, compiled."""
    inputs = keras.Input(shape=(784,), name="digits")
    x = keras.layers.Dense(64, activation="relu", name="dense_1")(inputs)
    x = keras.layers.Dropout(0.1)(x)
    x = keras.layers.Dense(64, activation="relu", name="dense_2")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name="3_layer_mlp")
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Announce(keras.callbacks.Callback):
    """Prints where training starts (after BackupAndRestore restored)."""

    def __init__(self, backup: BackupAndRestore) -> None:
        super().__init__()
        self.backup = backup

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.backup.resumed_from is not None:
            print(f"resumed after step {self.backup.resumed_from}", flush=True)
        print(f"start {self.backup.step}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="checkpoint directory")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--save-every", type=int, default=5, help="batches between saves")
    args = parser.parse_args(argv)
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)  # same inputs, same bits, and room for other jobs
    keras.utils.set_random_seed(0)  # fresh runs start alike; resumed ones restore
    x, y = make_digits(4096, seed=0)
    model = make_model()
    manager = ckpt.CheckpointManager(args.dir, save_every=args.save_every,
                                     keep=ckpt.KeepLast(3))
    backup = BackupAndRestore(manager)
    data = backup.dataset(x, y, batch_size=64, seed=0)
    model.fit(data, epochs=args.epochs, callbacks=[backup, Announce(backup)], verbose=0)
    status = "preempted" if backup.preempted else "done"
    print(f"{status}: step {backup.step}, checkpoints {manager.all_steps()}", flush=True)


if __name__ == "__main__":
    main()
