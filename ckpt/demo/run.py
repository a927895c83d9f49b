"""``ckpt demo``: train the seed MLP with checkpoints, and resume exactly when rerun.

The loop is the whole point of the demo: a few lines around the user's step::

    state = {"model": model, "data": order, "rng": ckpt.RNGState(noise)}
    with ckpt.TrainingLoop(mgr, state, total_steps=steps) as loop:
        for step in loop:
            loss = model.train_step(*batch(order.next_batch(), noise))
            loop.report(loss=loss, val_loss=...)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

import ckpt
from ckpt.demo.data import load_data
from ckpt.demo.model import make_model

__all__ = ["add_arguments", "main", "train", "DemoResult"]

BATCH_SIZE = 64
NOISE = 0.05  # input noise drawn from a checkpointed Generator: RNG state matters


@dataclass
class DemoResult:
    """What a demo run did, for the summary and for tests."""

    directory: str
    steps: int
    resumed_from: int | None
    preempted: bool
    last_step: int | None
    loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    kept: list[int] = field(default_factory=list)
    stop_signal: int | None = None  # the signal that interrupted the run

    @property
    def exit_code(self) -> int:
        """0 when finished; 128 + the signal when interrupted (130 SIGINT, 143 SIGTERM)."""
        return 0 if self.stop_signal is None else 128 + self.stop_signal


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's command-line options; every help text names its default."""
    parser.add_argument("--dir", default="ckpt-demo",
                        help="checkpoint directory (default: ./ckpt-demo)")
    parser.add_argument("--steps", type=_positive, default=3000, metavar="N",
                        help="total training steps; they run 1..N (default: %(default)s)")
    parser.add_argument("--save-every", type=_positive, default=100, metavar="K",
                        help="checkpoint every K steps, and the last one "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for weights, data and noise (default: %(default)s)")
    parser.add_argument("--optimizer", default="adam", choices=["sgd", "rmsprop", "adam"],
                        help="optimizer of the seed model (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: a bar when stderr is a terminal)")


def _optimizer(name: str) -> dict[str, Any]:
    configs = {"sgd": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
               "rmsprop": {"name": "rmsprop", "learning_rate": 0.001},
               "adam": {"name": "adam", "learning_rate": 0.001}}
    return configs[name]


def train(directory: str, *, steps: int, save_every: int, seed: int, optimizer: str,
          progress: bool = True, out: TextIO = sys.stdout) -> DemoResult:
    """Train to ``steps`` with checkpoints in ``directory``, resuming if it has some."""
    # seed every stream, as a reproducible program does; RNGState carries them on
    random.seed(seed)
    np.random.seed(seed)
    (x_train, y_train), (x_val, y_val) = load_data(n_train=6000, n_test=1000, seed=seed)
    model = make_model(seed=seed)
    model.compile(optimizer=_optimizer(optimizer))
    order = ckpt.DataOrder(len(x_train), batch_size=BATCH_SIZE, seed=seed, drop_last=True)
    noise = np.random.default_rng(seed + 1)
    state = {"model": model, "data": order, "rng": ckpt.RNGState(noise)}
    mgr = ckpt.CheckpointManager(directory, save_every=save_every,
                                 keep=ckpt.KeepLast(3) | ckpt.KeepBest("val_loss"))
    print(f"checkpoints go to {os.path.abspath(directory)} "
          "(keeping the last 3 and the best val_loss)", file=out)
    loss = val_loss = val_accuracy = None
    with ckpt.TrainingLoop(mgr, state, total_steps=steps) as loop:
        if loop.resumed_from is not None:
            print(f"resumed from step {loop.resumed_from}", file=out)
        bar = tqdm(total=steps, initial=steps - loop.remaining, desc="training", unit="step",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for step in loop:
            batch = order.next_batch()
            x = x_train[batch] + noise.normal(0, NOISE, (len(batch), 784)).astype(np.float32)
            loss = model.train_step(x, y_train[batch])
            loop.report(loss=loss)
            if mgr.should_save(step) or step == steps:
                val_loss, val_accuracy = model.evaluate(x_val, y_val)
                loop.report(val_loss=val_loss, val_accuracy=val_accuracy)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.close()
    result = DemoResult(directory=str(directory), steps=steps, resumed_from=loop.resumed_from,
                        preempted=loop.preempted, last_step=loop.last_saved, loss=loss,
                        val_loss=val_loss, val_accuracy=val_accuracy, kept=mgr.all_steps(),
                        stop_signal=loop.stop_signal)
    _summary(result, out)
    return result


def _summary(result: DemoResult, out: TextIO) -> None:
    if result.preempted:
        print(f"interrupted: saved step {result.last_step}; run the same command again to "
              "resume", file=out)
    elif result.loss is None:
        print(f"nothing to do: already trained to step {result.steps}", file=out)
    else:
        print(f"done: {result.steps} steps, loss {result.loss:.4f}, val_loss "
              f"{result.val_loss:.4f}, val_accuracy {result.val_accuracy:.3f}", file=out)
    print(f"checkpoints kept: {', '.join(map(str, result.kept))}", file=out)


def main(args: argparse.Namespace) -> int:
    """Run the demo from parsed command-line arguments; returns the exit code.

    0 when training finished; 130 (SIGINT) or 143 (SIGTERM) when a signal stopped it
    after saving, as the shell reports a process the signal killed.
    """
    result = train(args.dir, steps=args.steps, save_every=args.save_every, seed=args.seed,
                   optimizer=args.optimizer,
                   progress=not args.no_progress and sys.stderr.isatty())
    return result.exit_code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ckpt.demo.run")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
