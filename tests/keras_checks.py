"""Keras checks run in a child per backend (keras reads KERAS_BACKEND at import).

Run by tests/test_keras.py as ``python -m tests.keras_checks DIR``; each check prints
``ok NAME`` so the parent can assert on every one of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np

import ckpt
from ckpt.integrations import keras as ckeras
from tests import keras_checks_names


def seed_model() -> keras.Model:
    inputs = keras.Input(shape=(784,), name="digits")
    x = keras.layers.Dense(64, activation="relu")(inputs)
    x = keras.layers.Dropout(0.2, seed=3)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name="3_layer_mlp")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def numpy_of(variables) -> list[bytes]:
    return [keras.ops.convert_to_numpy(v).tobytes() for v in variables]


def data():
    rng = np.random.default_rng(0)
    return rng.random((256, 784), dtype=np.float32), rng.integers(0, 10, 256)


def check_fresh_model_restore_and_stable_paths(directory: Path) -> None:
    x, y = data()
    model = seed_model()
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    mgr = ckpt.CheckpointManager(directory / "mgr")
    mgr.save(1, {"model": model})
    fresh = seed_model()  # auto names now dense_2.., optimizer not built yet
    assert fresh.layers[1].name != model.layers[1].name
    assert not fresh.optimizer.built
    mgr.restore(into={"model": fresh})
    assert numpy_of(fresh.variables) == numpy_of(model.variables)
    assert numpy_of(fresh.optimizer.variables) == numpy_of(model.optimizer.variables)
    stored = ckpt.load(directory / "mgr" / "step_1" / "state.h5")["model"]
    assert list(stored["weights"]) == ["dense", "dropout", "batch_normalization", "dense_1",
                                       "dense_2"], list(stored["weights"])
    assert set(stored["weights"]["batch_normalization"]) == {"gamma", "beta", "moving_mean",
                                                             "moving_variance"}
    assert "seed_generator_state" in stored["weights"]["dropout"]
    assert set(stored["optimizer"]["slots"]["dense/kernel"]) == {"momentum", "velocity"}
    # same updates from here on: training continues exactly
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False)
    fresh.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False)
    assert numpy_of(fresh.variables) == numpy_of(model.variables)


def check_bfloat16_variables_keep_their_bits(directory: Path) -> None:
    """Variables of a dtype numpy lacks (bfloat16) go through the backend's tensors."""
    def build() -> keras.Model:
        inputs = keras.Input(shape=(8,))
        x = keras.layers.Dense(4, dtype="bfloat16")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(2)(x))
        model.compile(optimizer="adam", loss="mse")
        return model

    def bits(variables) -> list[bytes]:  # bfloat16 -> float32 is exact
        return [keras.ops.convert_to_numpy(keras.ops.cast(v.value, "float32")).tobytes()
                for v in variables]

    model = build()
    model.fit(np.ones((16, 8), np.float32), np.ones((16, 2), np.float32), verbose=0)
    assert "bfloat16" in [v.dtype for v in model.variables]
    mgr = ckpt.CheckpointManager(directory / "bf16")
    mgr.save(1, {"model": model})
    fresh = build()
    mgr.restore(into={"model": fresh})
    assert [v.dtype for v in fresh.variables] == [v.dtype for v in model.variables]
    assert bits(fresh.variables) == bits(model.variables)
    assert bits(fresh.optimizer.variables) == bits(model.optimizer.variables)
    stored = ckpt.load(directory / "bf16" / "step_1" / "state.h5")["model"]["weights"]
    # stored as the backend tensor (torch) or ml_dtypes array (jax): bfloat16 either way
    assert str(stored["dense"]["kernel"].dtype).endswith("bfloat16"), stored["dense"]["kernel"]


def check_mismatch_names_the_key(directory: Path) -> None:
    ckpt.save(directory / "m.h5", {"model": seed_model()})
    inputs = keras.Input(shape=(784,))
    other = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(32)(inputs)))
    mgr = ckpt.CheckpointManager(directory / "mm")
    mgr.save(1, {"model": seed_model()})
    try:
        mgr.restore(into={"model": other})
    except ckpt.StateMismatchError as error:
        assert "model/weights/dense/kernel: shape" in str(error), str(error)
    else:
        raise AssertionError("no mismatch reported")


def check_save_model_load_model(directory: Path) -> None:
    x, y = data()
    model = seed_model()
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    ckeras.save_model(model, directory / "whole.h5")
    loaded = ckeras.load_model(directory / "whole.h5")
    assert type(loaded) is type(model) and loaded.optimizer.built
    assert np.array_equal(keras.ops.convert_to_numpy(loaded.predict(x[:8], verbose=0)),
                          keras.ops.convert_to_numpy(model.predict(x[:8], verbose=0)))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False)
    assert numpy_of(loaded.variables) == numpy_of(model.variables)
    assert numpy_of(loaded.optimizer.variables) == numpy_of(model.optimizer.variables)
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    ckeras.save_model(sequential, directory / "seq.h5")
    assert numpy_of(ckeras.load_model(directory / "seq.h5").variables) == numpy_of(
        sequential.variables)


def check_architecture_only_json_yaml(directory: Path) -> None:
    model = seed_model()
    for rebuilt in (ckeras.model_from_json(ckeras.to_json(model)),
                    ckeras.model_from_yaml(ckeras.to_yaml(model))):
        assert [(type(a).__name__, a.name) for a in rebuilt.layers] == [
            (type(b).__name__, b.name) for b in model.layers]
        assert [v.shape for v in rebuilt.variables] == [v.shape for v in model.variables]


def check_variables_metrics_optimizer_leaves(directory: Path) -> None:
    x, y = data()
    model = seed_model()
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    variable = keras.Variable(np.arange(6.0).reshape(2, 3), name="v")
    metric = keras.metrics.Mean()
    metric.update_state([1.0, 2.0, 4.0])
    ckpt.save(directory / "leaves.h5", {"v": variable, "metric": metric,
                                         "opt": model.optimizer})
    plain = ckpt.load(directory / "leaves.h5")
    assert plain["v"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert plain["metric"] == {"total": np.float32(7.0), "count": np.float32(3.0)}
    assert len(plain["opt"]["slots"]) == len(model.trainable_variables)


def check_export_to_keras_formats_and_read_keras_archives(directory: Path) -> None:
    from ckpt.export import export_step
    from ckpt.inspection import describe
    from ckpt.integrations.keras import BackupAndRestore

    x, y = data()
    model = seed_model()
    backup = BackupAndRestore(ckpt.CheckpointManager(directory / "run", save_every=3))
    model.fit(backup.dataset(x, y, batch_size=64), epochs=1, callbacks=[backup], verbose=0)
    export_step(directory / "run", 4, directory / "out.weights.h5")
    export_step(directory / "run", 4, directory / "out.keras")
    weights_only = seed_model()
    weights_only.load_weights(directory / "out.weights.h5")  # Keras' own loader
    # (Keras' files hold weights, not seed-generator states: compare model.weights)
    assert numpy_of(weights_only.weights) == numpy_of(model.weights)
    whole = keras.saving.load_model(directory / "out.keras")
    assert numpy_of(whole.weights) == numpy_of(model.weights)
    assert numpy_of(whole.optimizer.variables) == numpy_of(model.optimizer.variables)
    tree = ckpt.load(directory / "out.keras")
    assert tree["config"]["class_name"] == "Functional"
    kernel = tree["weights"]["layers"]["dense"]["vars"]["0"]
    assert kernel.tobytes() == keras.ops.convert_to_numpy(model.layers[1].kernel).tobytes()
    assert list(ckpt.load(directory / "out.keras", keys=[("config", "class_name")])) == [
        "config"]
    shown = describe(directory / "out.keras")
    assert shown.format == "keras" and any(r.key == "weights/layers/dense/vars/0"
                                           for r in shown.leaves)


# one list of names (the parent parametrizes over it without importing keras)
CHECKS = [globals()[name] for name in keras_checks_names.NAMES]

if __name__ == "__main__":
    root = Path(sys.argv[1])
    keras.utils.set_random_seed(0)
    for check in CHECKS:
        where = root / check.__name__
        where.mkdir(parents=True)
        check(where)
        print(f"ok {check.__name__}", flush=True)
