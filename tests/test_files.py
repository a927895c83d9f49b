"""ckpt.save/ckpt.load of single files: atomic writes, metadata, plain HDF5 input."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import ckpt
from tests.conftest import assert_tree_equal


def write_keras_like(path):
    """The layout Keras 2 writes for model.save("m.h5"): config attrs, nested groups."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = '{"class_name": "Functional"}'
        f.attrs["keras_version"] = "2.15.0"
        weights = f.create_group("model_weights")
        for layer, shape in (("dense_1", (784, 64)), ("predictions", (64, 10))):
            group = weights.create_group(layer).create_group(layer)
            group.create_dataset("kernel:0", data=rng.standard_normal(shape).astype("f4"))
            group.create_dataset("bias:0", data=np.zeros(shape[1], "f4"))
        opt = f.create_group("optimizer_weights").create_group("Adam")
        opt.create_dataset("iter:0", data=np.int64(120))
        opt.create_dataset("names", data=[b"a", b"bc"])


def test_plain_hdf5_files_open_as_nested_dicts(tmp_path):
    path = tmp_path / "m.h5"
    write_keras_like(path)
    tree = ckpt.load(path)
    kernel = tree["model_weights"]["dense_1"]["dense_1"]["kernel:0"]
    assert kernel.shape == (784, 64) and kernel.dtype == np.float32
    with h5py.File(path) as f:
        assert np.array_equal(kernel, f["model_weights/dense_1/dense_1/kernel:0"][()])
    assert tree["optimizer_weights"]["Adam"]["iter:0"] == 120
    assert tree["optimizer_weights"]["Adam"]["names"] == ["a", "bc"]  # strings decoded
    only = ckpt.load(path, keys=[("model_weights", "predictions")])
    assert list(only) == ["model_weights"] and list(only["model_weights"]) == ["predictions"]
    assert ckpt.load_metadata(path) is None


def test_ckpt_files_are_plain_hdf5_for_other_tools(tmp_path):
    state = {"layer": {"kernel": np.arange(20_000, dtype=np.float32).reshape(100, 200)},
             "a/b": np.ones(30_000), "step": 3}
    ckpt.save(tmp_path / "c.h5", state, metadata={"epoch": 2})
    with h5py.File(tmp_path / "c.h5") as f:
        assert np.array_equal(f["layer/kernel"][()], state["layer"]["kernel"])
        assert np.array_equal(f["a%2Fb"][()], state["a/b"])
        assert ".ckpt" in f and "index" in f[".ckpt"]
    assert ckpt.load_metadata(tmp_path / "c.h5") == {"epoch": 2}
    assert_tree_equal(ckpt.load(tmp_path / "c.h5"), state)


@pytest.mark.parametrize("keys", [(0, "0"), ("0", 0)], ids=["int-first", "str-first"])
def test_an_int_key_and_the_same_str_key_get_distinct_datasets(tmp_path, keys):
    # int first used to fail with h5py's "name already exists"
    tree = {key: np.full(20_000, number, np.float32) for number, key in enumerate(keys)}
    ckpt.save(tmp_path / "f.h5", tree)
    assert_tree_equal(ckpt.load(tmp_path / "f.h5"), tree)
    with h5py.File(tmp_path / "f.h5", "r") as file:
        assert file["%i0"][0] == keys.index(0) and file["0"][0] == keys.index("0")


def test_save_replaces_atomically_and_a_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.h5"
    ckpt.save(path, {"v": 1})
    ckpt.save(path, {"v": 2})
    assert ckpt.load(path) == {"v": 2}
    with pytest.raises(ckpt.UnsupportedTypeError):
        ckpt.save(path, {"v": object()})
    assert ckpt.load(path) == {"v": 2} and os.listdir(tmp_path) == ["w.h5"]


def test_save_on_a_full_disk(small_disk):
    path = small_disk / "w.h5"
    ckpt.save(path, {"v": np.ones(1000)})
    with pytest.raises(ckpt.SaveError, match="disk is full"):
        ckpt.save(path, {"v": np.ones(2_000_000)})
    assert (ckpt.load(path)["v"] == 1).all() and os.listdir(small_disk) == ["w.h5"]


def test_checksums_are_verified_on_load(tmp_path):
    path = tmp_path / "c.h5"
    ckpt.save(path, {"big": np.zeros(100_000)})
    data = bytearray(path.read_bytes())
    data[-10_000] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match="c.h5 at key big: checksum"):
        ckpt.load(path)
    assert ckpt.load(path, verify=False)["big"].shape == (100_000,)


def test_load_into_fills_live_objects_in_place_and_refuses_a_mismatch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    ckpt.save(tmp_path / "f.ckpt", {"model": model, "opt": opt, "ema": np.arange(4.0), "n": 3})
    fresh, ema = torch.nn.Linear(3, 2), np.zeros(4)
    fresh_opt = torch.optim.Adam(fresh.parameters())
    weight = fresh.weight.data_ptr()
    out = ckpt.load(tmp_path / "f.ckpt", into={"model": fresh, "opt": fresh_opt, "ema": ema,
                                              "n": 0})
    assert out["n"] == 3 and out["model"] is fresh and out["ema"] is ema
    assert torch.equal(fresh.weight, model.weight) and fresh.weight.data_ptr() == weight
    assert np.array_equal(ema, np.arange(4.0))  # read into the template's own array
    assert fresh_opt.state_dict()["state"][0]["step"] == 1
    wrong = torch.nn.Linear(4, 2)
    before = wrong.weight.detach().clone()
    with pytest.raises(ckpt.StateMismatchError, match=r"model/weight: shape"):
        ckpt.load(tmp_path / "f.ckpt", into={"model": wrong, "opt": fresh_opt, "ema": ema,
                                            "n": 0})
    assert torch.equal(wrong.weight, before)  # refused before anything was touched
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ckpt.CheckpointError, match=r"plain.h5: load\(into=\) needs a file"):
        ckpt.load(tmp_path / "plain.h5", into={"x": np.zeros(3)})
