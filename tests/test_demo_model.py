"""The numpy reference workload: Keras-style save/load flows and exact resume."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import ckpt
from ckpt.demo import (
    SGD,
    Adam,
    Dense,
    Model,
    RMSprop,
    batch_indices,
    get_optimizer,
    load_data,
    load_model,
    make_digits,
    make_model,
    model_from_json,
    model_from_yaml,
)

yaml = pytest.importorskip("yaml")

OPTIMIZERS = {
    "sgd": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
    "sgd-plain": {"name": "sgd", "learning_rate": 0.05},
    "rmsprop": {"name": "rmsprop", "learning_rate": 0.001, "rho": 0.9, "epsilon": 1e-7},
    "rmsprop-momentum": {"name": "rmsprop", "learning_rate": 0.001, "momentum": 0.5},
    "adam": {"name": "adam", "learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999},
}
BATCH = 64


@pytest.fixture(scope="module")
def data():
    return load_data(n_train=1024, n_test=256, seed=0)


def batch(data, step):
    (x, y), _ = data
    idx = batch_indices(step, len(x), BATCH, seed=0)
    return x[idx], y[idx]


def trained(data, optimizer="adam", steps=5, seed=0, units=64) -> Model:
    model = make_model(units=units, seed=seed)
    model.compile(optimizer=optimizer)
    for step in range(steps):
        model.train_step(*batch(data, step))
    return model


def assert_bitwise(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def assert_same_weights(a: Model, b: Model) -> None:
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        assert_bitwise(wa, wb)


# ------------------------------------------------------------- whole model


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_whole_model_save_load_resumes_bit_for_bit(data, tmp_path, opt):
    model = trained(data, OPTIMIZERS[opt], steps=5)
    path = tmp_path / "model.h5"
    model.save(path)
    restored = load_model(path)

    (_, _), (x_test, _) = data
    np.testing.assert_allclose(restored.predict(x_test), model.predict(x_test), atol=1e-6)
    assert restored.get_config() == model.get_config()
    assert restored.loss == model.loss
    assert restored.optimizer.get_config() == model.optimizer.get_config()
    assert restored.optimizer.iterations == model.optimizer.iterations == 5

    # the next step is identical: same loss, same weights and slots, bit for bit
    x, y = batch(data, 5)
    assert restored.train_step(x, y) == model.train_step(x, y)
    assert_same_weights(restored, model)
    slots, restored_slots = model.optimizer.slots, restored.optimizer.slots
    assert slots.keys() == restored_slots.keys()
    for name in slots:
        assert slots[name].keys() == restored_slots[name].keys()
        for slot in slots[name]:
            assert_bitwise(slots[name][slot], restored_slots[name][slot])


def test_state_dict_through_ckpt_resumes_bit_for_bit(data, tmp_path):
    model = trained(data, "adam", steps=3)
    # the model is stateful: ckpt stores its state_dict() in place of the object
    ckpt.save(tmp_path / "state.h5", {"model": model, "step": 3})
    other = make_model(seed=7)
    other.compile("adam")
    loaded = ckpt.load(tmp_path / "state.h5")
    other.load_state_dict(loaded["model"])
    x, y = batch(data, loaded["step"])
    assert other.train_step(x, y) == model.train_step(x, y)
    assert_same_weights(other, model)


def test_uncompiled_model_saves_without_training_config(tmp_path):
    model = make_model(seed=0)
    model.save(tmp_path / "m.h5")
    restored = load_model(tmp_path / "m.h5")
    assert restored.optimizer is None
    assert_same_weights(restored, model)


@pytest.mark.parametrize("opt", ["sgd-plain", "adam"])
def test_load_model_without_compile_brings_weights_only(data, tmp_path, opt):
    model = trained(data, OPTIMIZERS[opt], steps=2)
    model.save(tmp_path / "m.h5")
    restored = load_model(tmp_path / "m.h5", compile=False)
    assert restored.optimizer is None
    assert_same_weights(restored, model)


def test_load_model_refuses_a_weights_file(tmp_path):
    make_model(seed=0).save_weights(tmp_path / "w.h5")
    with pytest.raises(ValueError, match="load_weights"):
        load_model(tmp_path / "w.h5")


# ---------------------------------------------------------- config only


def test_config_rebuild_has_same_architecture_but_fresh_weights(data):
    model = trained(data, "adam", steps=2)
    x = data[1][0][:32]
    rebuilt = [
        Model.from_config(model.get_config(), seed=1),
        model_from_json(model.to_json(), seed=2),
        model_from_yaml(model.to_yaml(), seed=3),
    ]
    for other in rebuilt:
        assert other.get_config() == model.get_config()
        assert other.optimizer is None  # architecture only, no training config
        assert not np.allclose(other.predict(x), model.predict(x))


def test_json_and_yaml_configs_round_trip_equal():
    model = make_model(seed=0)
    assert json.loads(model.to_json()) == yaml.safe_load(model.to_yaml())
    assert model_from_json(model.to_json()).get_config() == model.get_config()
    assert model_from_yaml(model.to_yaml()).get_config() == model.get_config()
    config = model.get_config()
    assert [layer["config"]["name"] for layer in config["layers"]] == [
        "dense_1", "dense_2", "predictions"]
    assert config["input"] == {"name": "digits", "shape": [784]}


def test_same_seed_same_weights():
    assert_same_weights(make_model(seed=5), make_model(seed=5))
    weights = make_model(seed=5).get_weights()
    assert all(w.dtype == np.float32 for w in weights)
    assert [w.shape for w in weights] == [(784, 64), (64,), (64, 64), (64,), (64, 10), (10,)]


def test_to_yaml_without_pyyaml_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` fail
    with pytest.raises(ImportError, match=r"pip install ckpt\[yaml\]"):
        make_model(seed=0).to_yaml()


# --------------------------------------------------------- weights only


def test_save_weights_load_weights_gives_equal_predictions(data, tmp_path):
    model = trained(data, "adam", steps=3)
    model.save_weights(tmp_path / "w.h5")
    assert set(ckpt.load(tmp_path / "w.h5")) == {"dense_1", "dense_2", "predictions"}
    fresh = make_model(seed=1)
    fresh.compile("adam")
    fresh.load_weights(tmp_path / "w.h5")
    x = data[1][0]
    np.testing.assert_allclose(fresh.predict(x), model.predict(x), atol=1e-6)
    assert fresh.optimizer.iterations == 0
    assert model.optimizer.iterations == 3


def test_get_set_weights_transfer(data):
    model = trained(data, "sgd", steps=3)
    fresh = make_model(seed=1)
    fresh.compile("adam")
    fresh.set_weights(model.get_weights())
    x = data[1][0]
    np.testing.assert_allclose(fresh.predict(x), model.predict(x), atol=1e-6)
    assert fresh.optimizer.iterations == 0
    with pytest.raises(ValueError, match="dense_2/bias"):
        weights = model.get_weights()
        weights[3] = np.zeros(3, np.float32)
        fresh.set_weights(weights)


def test_load_weights_from_a_whole_model_file(data, tmp_path):
    model = trained(data, "rmsprop", steps=2)
    model.save(tmp_path / "m.h5")
    fresh = make_model(seed=1)
    fresh.load_weights(tmp_path / "m.h5")
    assert_same_weights(fresh, model)


def test_load_weights_into_another_width_names_layer_and_shapes(tmp_path):
    make_model(units=64, seed=0).save_weights(tmp_path / "w.h5")
    narrow = make_model(units=32, seed=0)
    before = narrow.get_weights()
    with pytest.raises(ckpt.StateMismatchError) as info:
        narrow.load_weights(tmp_path / "w.h5")
    message = str(info.value)
    assert "dense_1/kernel" in message
    assert "(784, 32)" in message and "(784, 64)" in message
    assert isinstance(info.value, ValueError)
    for w, b in zip(narrow.get_weights(), before, strict=True):  # nothing half-loaded
        assert_bitwise(w, b)


# -------------------------------------------------------------- optimizers


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_optimizer_config_and_state_round_trip(data, tmp_path, opt):
    optimizer = trained(data, OPTIMIZERS[opt], steps=2).optimizer
    assert get_optimizer(optimizer.get_config()).get_config() == optimizer.get_config()
    ckpt.save(tmp_path / "opt.h5", {"opt": optimizer})
    state = ckpt.load(tmp_path / "opt.h5")["opt"]
    assert state["iterations"] == 2 and isinstance(state["iterations"], int)
    other = get_optimizer(optimizer.get_config())
    other.load_state_dict(state)
    assert other.state_dict()["slots"].keys() == optimizer.state_dict()["slots"].keys()


def test_optimizer_defaults_and_errors():
    assert isinstance(get_optimizer("sgd"), SGD)
    assert isinstance(get_optimizer("RMSprop"), RMSprop)
    assert isinstance(get_optimizer({"name": "adam", "learning_rate": 0.01}), Adam)
    with pytest.raises(ValueError, match="unknown optimizer"):
        get_optimizer("lbfgs")
    optimizer = Adam()
    optimizer.build({"w": np.zeros((2, 3), np.float32)})
    with pytest.raises(ckpt.StateMismatchError, match="slots/w/m"):
        optimizer.load_state_dict({"iterations": 1, "slots": {"w": {
            "m": np.zeros((3, 2), np.float32), "v": np.zeros((2, 3), np.float32)}}})


# ------------------------------------------------------------ the maths


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    model = Model([Dense(5, "relu"), Dense(4, "relu"), Dense(3, "softmax")], 6,
                  dtype="float64", seed=0)
    x, y = rng.normal(size=(7, 6)), rng.integers(0, 3, size=7)
    _, grads = model.compute_gradients(x, y)
    eps = 1e-6
    for name, value in model.variables().items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + eps
            plus, _ = model.compute_gradients(x, y)
            value[index] = saved - eps
            minus, _ = model.compute_gradients(x, y)
            value[index] = saved
            numeric[index] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)


def test_loss_decreases_on_the_dataset():
    (x, y), (x_test, y_test) = load_data(n_train=4096, n_test=512, seed=1)
    model = make_model(seed=0)
    model.compile("adam")
    losses = [model.train_step(x[i], y[i])
              for i in (batch_indices(s, len(x), BATCH, seed=1) for s in range(200))]
    assert np.mean(losses[:10]) > 1.8  # starts near log(10): not solved at once
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:10])
    loss, accuracy = model.evaluate(x_test, y_test)
    assert loss < 1.5 and 0.4 < accuracy <= 1.0


def test_dataset_is_deterministic_and_shaped_like_mnist():
    x, y = make_digits(300, seed=4)
    assert x.shape == (300, 784) and x.dtype == np.float32
    assert y.shape == (300,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))
    x2, y2 = make_digits(300, seed=4)
    assert_bitwise(x, x2)
    assert_bitwise(y, y2)
    assert not np.array_equal(make_digits(300, seed=5)[0], x)
    epoch = np.concatenate([batch_indices(s, 300, 50, seed=0) for s in range(6)])
    assert sorted(epoch) == list(range(300))
    assert_bitwise(batch_indices(7, 300, 50, seed=0), batch_indices(7, 300, 50, seed=0))
