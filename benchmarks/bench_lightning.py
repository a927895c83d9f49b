"""Save and load a Lightning checkpoint with ckpt's ``CkptIO`` vs Lightning's default
``TorchCheckpointIO`` (``torch.save``/``torch.load``), and through ``BackupAndRestore``'s
``CheckpointManager``, in one run.

    python benchmarks/bench_lightning.py [--params 25] [--runs 5]

The checkpoint is the one ``Trainer`` writes (``dump_checkpoint``) after one AdamW
step of an MLP of ``--params`` million weights: weights, two AdamW slots, loop
state. Each variant runs ``--runs`` times in rotating order, after an ``os.sync()``;
the table gives the median and the ratio against the baseline measured in the same
run (time / baseline, lower is faster). ckpt fsyncs before returning; torch.save
does not (the ``+ fsync`` row adds it).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from _timing import fsync_path, report, rotate  # benchmarks/ is on sys.path as a script
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ckpt
from ckpt.integrations.lightning import CkptIO, to_tree


class Wide(pl.LightningModule):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def trained_checkpoint(million_params: int) -> dict:
    """Lightning's checkpoint dict after one optimizer step (AdamW slots filled)."""
    width = int((million_params * 1e6 / 4) ** 0.5)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Wide(width), DataLoader(TensorDataset(torch.randn(4, width)), batch_size=4))
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=25, help="millions of weights")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    checkpoint = trained_checkpoint(args.params)
    nbytes = sum(t.nbytes for t in checkpoint["state_dict"].values()) * 3
    directory = Path(tempfile.mkdtemp(prefix="bench-lightning-"))
    torch_io, ckpt_io = TorchCheckpointIO(), CkptIO()
    torch_file, ckpt_file = directory / "torch.ckpt", directory / "ckpt.ckpt"
    try:
        torch_io.save_checkpoint(checkpoint, torch_file)
        ckpt_io.save_checkpoint(checkpoint, ckpt_file)
        manager = ckpt.CheckpointManager(directory / "mgr", keep=ckpt.KeepLast(1))
        steps = iter(range(1, 10**6))
        manager.save(next(steps), to_tree(checkpoint))

        def torch_save_fsync() -> None:
            torch_io.save_checkpoint(checkpoint, torch_file)
            fsync_path(torch_file)

        medians = rotate({
            "TorchCheckpointIO save": lambda: torch_io.save_checkpoint(checkpoint, torch_file),
            "TorchCheckpointIO save + fsync": torch_save_fsync,
            "CkptIO save": lambda: ckpt_io.save_checkpoint(checkpoint, ckpt_file),
            "CheckpointManager.save": lambda: manager.save(next(steps), to_tree(checkpoint)),
            "TorchCheckpointIO load": lambda: torch_io.load_checkpoint(torch_file),
            "CkptIO load": lambda: ckpt_io.load_checkpoint(ckpt_file),
            "CheckpointManager.restore": manager.restore,
        }, args.runs)
        base = {name: "TorchCheckpointIO save" for name in medians}
        base.update({name: "TorchCheckpointIO load" for name in medians if "load" in name
                     or "restore" in name})
        report(f"Lightning checkpoint: {nbytes / 2**20:.0f} MiB of weights and AdamW slots, "
               f"median of {args.runs}", medians, base)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
