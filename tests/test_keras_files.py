"""Real Keras files (Keras 3 on the torch backend) open with ckpt.load and ckpt show."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import ckpt  # noqa: E402

# Keras' own numpy-2 deprecation notes, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """The seed model of the Keras guides, trained one epoch, saved both ways."""
    directory = tmp_path_factory.mktemp("keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(784,), name="digits")
    x = keras.layers.Dense(64, activation="relu", name="dense_1")(inputs)
    x = keras.layers.Dense(64, activation="relu", name="dense_2")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name="3_layer_mlp")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="rmsprop")
    rng = np.random.default_rng(0)
    model.fit(rng.random((64, 784), dtype=np.float32), rng.integers(0, 10, 64), epochs=1,
              verbose=0)
    model.save(directory / "m.h5")
    model.save_weights(directory / "m.weights.h5")
    return directory, [np.asarray(w) for w in model.get_weights()]


def leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from leaves(value)
    else:
        yield tree


def test_keras_model_save_h5_opens_as_a_nested_dict(keras_files):
    directory, weights = keras_files
    tree = ckpt.load(directory / "m.h5")
    assert "model_weights" in tree and "optimizer_weights" in tree
    stored = [a for a in leaves(tree["model_weights"]) if isinstance(a, np.ndarray)]
    for weight in weights:  # every weight of the model is in the file, bit for bit
        assert any(a.shape == weight.shape and a.tobytes() == weight.tobytes()
                   for a in stored), weight.shape


def test_keras_save_weights_opens_as_a_nested_dict(keras_files):
    directory, weights = keras_files
    tree = ckpt.load(directory / "m.weights.h5")
    stored = [a for a in leaves(tree["layers"]) if isinstance(a, np.ndarray)]
    assert sorted(a.shape for a in stored) == sorted(w.shape for w in weights)
    only_layers = ckpt.load(directory / "m.weights.h5", keys="layers")
    assert list(only_layers) == ["layers"]


def test_ckpt_show_lists_a_keras_file(keras_files):
    directory, _ = keras_files
    shown = subprocess.run([sys.executable, "-m", "ckpt.cli", "show",
                            str(directory / "m.weights.h5")], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "(784, 64)" in shown.stdout and "float32" in shown.stdout
