"""Train a LightningModule with checkpoints, and resume it exactly after any interruption.

    python examples/lightning_fit.py --dir /tmp/lrun --epochs 3 --save-every 5

Kill it at any moment (SIGTERM, Ctrl-C, even SIGKILL) and run the same command
again: ``trainer.fit`` continues mid-epoch after the newest checkpoint, and the
final weights, optimizer and scheduler state and ``trainer.global_step`` are bit
for bit those of an uninterrupted run. SIGTERM and Ctrl-C save the step in
progress and exit with 143 and 130 (128 + the signal, as the shell does).

The model has dropout (drawn from torch's global RNG), AdamW with a OneCycleLR
stepped every batch, and validation twice per epoch; the data is shuffled every
epoch. ``--final PATH`` writes, after ``fit`` returns, the trainer's live state
(weights, optimizer, scheduler, ``global_step``, the fit loop's counters) to one
file, so that two runs can be compared.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ckpt
from ckpt.integrations.lightning import BackupAndRestore, CkptIO

FEATURES, CLASSES = 32, 4


def make_dataset(samples: int, seed: int) -> TensorDataset:
    """Noisy copies of ``CLASSES`` fixed random patterns; the noise is drawn from ``seed``."""
    patterns = np.random.default_rng(0).standard_normal((CLASSES, FEATURES))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, samples)
    inputs = patterns[labels] + 1.5 * rng.standard_normal((samples, FEATURES))
    return TensorDataset(torch.from_numpy(inputs.astype(np.float32)), torch.from_numpy(labels))


class Classifier(pl.LightningModule):
    """An MLP with dropout; AdamW with OneCycleLR (stepped every batch)."""

    def __init__(self, hidden: int = 1024, lr: float = 3e-3, total_steps: int = 100) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(hidden, CLASSES))

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        loss = nn.functional.cross_entropy(self.net(inputs), labels)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        inputs, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(inputs), labels))

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.hparams.total_steps)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class Announce(pl.Callback):
    """Prints ``start N`` when this process trains its first step (for the tests)."""

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if not getattr(self, "started", False):
            self.started = True
            print(f"start {trainer.global_step + 1}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dir", required=True, help="checkpoint directory")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to train")
    parser.add_argument("--save-every", type=int, default=5, help="optimizer steps per save")
    parser.add_argument("--keep", type=int, default=3, help="checkpoints kept (the newest)")
    parser.add_argument("--samples", type=int, default=2048, help="training samples")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--max-steps", type=int, default=-1,
                        help="stop after this many steps, as a time limit would (-1: no limit)")
    parser.add_argument("--final", help="write the trainer's final state to this file")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    pl.seed_everything(0, verbose=False)

    train = DataLoader(make_dataset(args.samples, seed=1), batch_size=args.batch_size,
                       shuffle=True)
    val = DataLoader(make_dataset(256, seed=2), batch_size=64)
    steps = args.epochs * len(train)
    model = Classifier(total_steps=steps)

    manager = ckpt.CheckpointManager(args.dir, keep=ckpt.KeepLast(args.keep))
    backup = BackupAndRestore(manager, every_n_train_steps=args.save_every)
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, accelerator="cpu",
                         devices=1, callbacks=[backup, Announce()], plugins=[CkptIO()],
                         val_check_interval=0.5, deterministic=True, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    if manager.latest_step() is not None:
        print(f"resumed after step {manager.latest_step()}", flush=True)
    trainer.fit(model, train, val)
    if backup.preempted:
        print(f"preempted at step {trainer.global_step}", flush=True)
        return 128 + backup.stop_signal
    print(f"done: step {trainer.global_step}, checkpoints {manager.all_steps()}", flush=True)
    if args.final:
        ckpt.save(args.final, {
            "model": model.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "global_step": trainer.global_step, "epoch": trainer.current_epoch,
            "fit_loop": trainer.fit_loop.state_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
