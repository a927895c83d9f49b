"""ckpt.integrations.lightning with real Lightning on CPU: CkptIO files written by
ModelCheckpoint and read by fit(ckpt_path=...), refused hyper-parameters, no unpickling,
and what BackupAndRestore refuses or counts."""

from __future__ import annotations

import logging
import pathlib
import warnings

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset, TensorDataset  # noqa: E402

import ckpt  # noqa: E402
from ckpt.h5format import is_ckpt_file  # noqa: E402
from ckpt.integrations.lightning import (  # noqa: E402
    BackupAndRestore,
    CkptIO,
    load_checkpoint,
    load_from_checkpoint,
)
from tests.conftest import assert_tree_equal  # noqa: E402

pytestmark = pytest.mark.torch


class Tiny(pl.LightningModule):
    def __init__(self, hidden: int = 8, extra: object = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Dropout(0.2), nn.Linear(hidden, 1))

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": optimizer,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)}


class AtTrainStart(pl.Callback):
    """Records what fit() restored: the step and the weights when training starts."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.global_step = trainer.global_step
        self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}


def loader(batches: int = 12) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batches * 4, 4, generator=generator)
    return DataLoader(TensorDataset(inputs, inputs.sum(1, keepdim=True)), batch_size=4,
                      shuffle=True)


def trainer(**options) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, **options)


@pytest.fixture(autouse=True)
def quiet_lightning():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        # Lightning's advice about the set-ups these tests make on purpose
        for advice in ("Be aware that when using `ckpt_path`", "The dirpath has changed",
                       "You're resuming from a checkpoint that ended before"):
            warnings.filterwarnings("ignore", message=advice)
        yield


def test_model_checkpoint_writes_ckpt_files_that_fit_ckpt_path_resumes(tmp_path):
    keep = ModelCheckpoint(dirpath=tmp_path / "mc", every_n_train_steps=4, save_top_k=2,
                           monitor="loss")
    trainer(max_epochs=1, plugins=[CkptIO()], callbacks=[keep]).fit(Tiny(), loader())

    files = sorted((tmp_path / "mc").iterdir())
    assert len(files) == 2, files  # save_top_k removed the third through CkptIO
    for path in files:
        assert is_ckpt_file(str(path)) and path.read_bytes()[:2] != b"PK"  # not torch.save's zip
    saved = ckpt.load(keep.best_model_path)  # plain ckpt.load reads them too
    assert saved["hyper_parameters"] == {"hidden": 8, "extra": None}
    assert saved["optimizer_states"][0]["state"][0]["exp_avg"].dtype == torch.float32
    assert any(key.startswith("ModelCheckpoint") for key in saved["callbacks"])
    assert ckpt.load_metadata(keep.best_model_path)["global_step"] == saved["global_step"]

    rebuilt = load_from_checkpoint(Tiny, keep.best_model_path, hidden=8)
    assert rebuilt.hparams.hidden == 8 and isinstance(rebuilt, Tiny)
    for name, tensor in saved["state_dict"].items():
        assert_tree_equal(rebuilt.state_dict()[name], tensor, name)

    seen = AtTrainStart()
    trainer(max_epochs=2, plugins=[CkptIO()], callbacks=[seen],
            enable_checkpointing=False).fit(Tiny(), loader(), ckpt_path=keep.best_model_path)
    assert seen.global_step == saved["global_step"] > 0
    assert sorted(seen.weights) == sorted(saved["state_dict"])
    for name, tensor in saved["state_dict"].items():
        assert_tree_equal(seen.weights[name], tensor, name)


def test_hyper_parameters_a_tree_cannot_hold_are_refused_naming_the_key(tmp_path):
    target = tmp_path / "x.ckpt"
    checkpoint = {"state_dict": {}, "hyper_parameters": {"paths": [pathlib.Path("data")]}}
    with pytest.raises(ckpt.UnsupportedTypeError, match=r"hyper_parameters/paths/0: .*ignore"):
        CkptIO().save_checkpoint(checkpoint, target)
    module = {"state_dict": {}, "hyper_parameters": {"loss": nn.CrossEntropyLoss()}}
    with pytest.raises(ckpt.UnsupportedTypeError,
                       match=r"hyper_parameters/loss: .*save_hyperparameters\(ignore"):
        CkptIO().save_checkpoint(module, target)
    assert not target.exists()

    # BackupAndRestore refuses at fit's start, not at its first save
    manager = ckpt.CheckpointManager(tmp_path / "run")
    with pytest.raises(ckpt.UnsupportedTypeError, match="hyper_parameters/extra"):
        trainer(max_epochs=1, callbacks=[BackupAndRestore(manager)]).fit(
            Tiny(extra=object()), loader())
    with pytest.raises(ckpt.UnsupportedTypeError, match="datamodule_hyper_parameters/root"):
        trainer(max_epochs=1, callbacks=[BackupAndRestore(manager)]).fit(
            Tiny(), datamodule=Data(root=pathlib.Path("data")))
    assert manager.all_steps() == []


class Data(pl.LightningDataModule):
    def __init__(self, root: object = None) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        return loader()


def test_a_torch_save_file_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(ckpt.CheckpointError, match="never unpickles"):
        CkptIO().load_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_saves_only_after_optimizer_steps_with_gradient_accumulation(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path / "run")
    backup = BackupAndRestore(manager, every_n_train_steps=2)
    fit = trainer(max_epochs=1, accumulate_grad_batches=3, callbacks=[backup],
                  enable_checkpointing=False)
    fit.fit(Tiny(), loader(12))
    assert fit.global_step == 4 and manager.all_steps() == [2, 4]
    restored = manager.restore(4)
    assert restored["global_step"] == 4
    # 4 steps of 3 batches: the whole epoch is consumed
    assert restored["callbacks"]["BackupAndRestore"]["data"]["position"] == 48


class Stream(IterableDataset):
    def __iter__(self):
        return iter([(torch.ones(4), torch.ones(1))] * 8)


def test_a_loader_that_cannot_resume_mid_epoch_is_refused_saying_why(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path / "run")
    with pytest.raises(ValueError, match="cannot resume an IterableDataset mid-epoch"):
        trainer(max_epochs=1, callbacks=[BackupAndRestore(manager)]).fit(
            Tiny(), DataLoader(Stream(), batch_size=4))
    with pytest.raises(ValueError, match="every_n_train_steps must be None or an int >= 1"):
        BackupAndRestore(manager, every_n_train_steps=0)


def fit_with_scaler(directory, max_steps: int) -> tuple:
    """Two epochs of 16-mixed on CPU with a GradScaler whose scale grows every 3 steps."""
    pl.seed_everything(0, verbose=False)
    precision = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler(
        "cpu", init_scale=2.0**10, growth_interval=3))
    model = Tiny()
    backup = BackupAndRestore(ckpt.CheckpointManager(directory), every_n_train_steps=4)
    fit = trainer(max_epochs=2, max_steps=max_steps, plugins=[precision], callbacks=[backup],
                  enable_checkpointing=False)
    fit.fit(model, loader())
    return model, fit, precision.scaler


def test_a_fit_stopped_mid_epoch_resumes_in_process_with_the_precision_plugin_state(tmp_path):
    model, fit, scaler = fit_with_scaler(tmp_path / "reference", -1)
    assert fit.global_step == 24 and scaler.get_scale() > 2.0**10  # the scale grew

    stopped = fit_with_scaler(tmp_path / "resumed", 10)[1]  # mid-epoch, not a save step
    assert stopped.global_step == 10
    assert ckpt.CheckpointManager(tmp_path / "resumed").all_steps() == [4, 8, 10]
    resumed_model, resumed_fit, resumed_scaler = fit_with_scaler(tmp_path / "resumed", -1)

    assert resumed_fit.global_step == 24
    assert resumed_scaler.state_dict() == scaler.state_dict()
    assert_tree_equal(resumed_fit.fit_loop.state_dict(), fit.fit_loop.state_dict())
    assert_tree_equal(resumed_fit.optimizers[0].state_dict(), fit.optimizers[0].state_dict())
    for name, tensor in model.state_dict().items():
        assert_tree_equal(resumed_model.state_dict()[name], tensor, name)


def fit_tiny(directory, checkpoints, ckpt_path=None) -> tuple:
    """Two epochs of 12 steps; ModelCheckpoint writes every 5th step through CkptIO."""
    pl.seed_everything(0, verbose=False)
    model, seen = Tiny(), AtTrainStart()
    every_5 = ModelCheckpoint(dirpath=checkpoints, filename="{step}", every_n_train_steps=5,
                              save_top_k=-1)
    backup = BackupAndRestore(ckpt.CheckpointManager(directory), every_n_train_steps=4)
    fit = trainer(max_epochs=2, plugins=[CkptIO()], callbacks=[backup, every_5, seen])
    fit.fit(model, loader(), ckpt_path=ckpt_path)
    return model, fit, seen


def test_fit_ckpt_path_wins_and_a_model_checkpoint_file_resumes_exactly(tmp_path):
    model, fit, _ = fit_tiny(tmp_path / "run", tmp_path / "mc")
    manager = ckpt.CheckpointManager(tmp_path / "run")
    assert manager.all_steps() == [4, 8, 12, 16, 20, 24]

    # the manager's newest is step 24; the file of step 10 is what fit() is given
    again, again_fit, seen = fit_tiny(tmp_path / "run", tmp_path / "mc2",
                                      ckpt_path=tmp_path / "mc" / "step=10.ckpt")
    assert seen.global_step == 10  # mid-epoch: the file holds the data position and RNG
    assert again_fit.global_step == 24
    assert_tree_equal(again_fit.fit_loop.state_dict(), fit.fit_loop.state_dict())
    assert_tree_equal(again_fit.optimizers[0].state_dict(), fit.optimizers[0].state_dict())
    for name, tensor in model.state_dict().items():
        assert_tree_equal(again.state_dict()[name], tensor, name)
    # the steps after 10 of the first run were moved aside, not deleted, and saved anew
    assert manager.all_steps() == [4, 8, 12, 16, 20, 24]
    assert len([p for p in (tmp_path / "run").iterdir() if p.name.startswith("damaged-")]) == 4
