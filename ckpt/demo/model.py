"""The seed's Keras MLP in numpy, with the seed's save/load flows on top of ckpt.

``digits(784) -> Dense(64, relu) -> Dense(64, relu) -> Dense(10, softmax)``, trained
with sparse categorical cross-entropy and hand-written gradients. Three ways to
persist it, as in Keras:

* architecture only: ``get_config``/``Model.from_config``, ``to_json``/``model_from_json``,
  ``to_yaml``/``model_from_yaml`` (fresh weights on rebuild);
* weights only: ``get_weights``/``set_weights``, ``save_weights``/``load_weights``;
* everything: ``model.save(path)``/``load_model(path)``, which also brings back the
  loss, the optimizer's config and its state, so training continues bit for bit.

Files are plain ckpt files (HDF5); configs go in the file's JSON metadata. Nothing
is pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import ckpt
from ckpt.demo.optimizers import Optimizer, get_optimizer
from ckpt.errors import StateMismatchError

__all__ = ["Dense", "Model", "make_model", "model_from_json", "model_from_yaml",
           "load_model", "MODEL_FORMAT", "WEIGHTS_FORMAT"]

MODEL_FORMAT = "ckpt.demo.model"
WEIGHTS_FORMAT = "ckpt.demo.weights"
_ACTIVATIONS = ("linear", "relu", "softmax")
_LOSSES = ("sparse_categorical_crossentropy",)
PathLike = str | os.PathLike[str]


class Dense:
    """``activation(x @ kernel + bias)``; caches its input for the backward pass."""

    def __init__(self, units: int, activation: str | None = None, name: str | None = None
                 ) -> None:
        activation = activation or "linear"
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {_ACTIVATIONS}")
        self.units, self.activation, self.name = int(units), activation, name
        self.kernel = np.zeros((0, self.units), dtype=np.float32)
        self.bias = np.zeros(self.units, dtype=np.float32)
        self._x: np.ndarray | None = None
        self._z: np.ndarray | None = None

    def build(self, input_dim: int, rng: np.random.Generator, dtype: np.dtype) -> None:
        """Glorot-uniform kernel and zero bias, as Keras initializes ``Dense``."""
        limit = np.sqrt(6.0 / (input_dim + self.units))
        self.kernel = rng.uniform(-limit, limit, size=(input_dim, self.units)).astype(dtype)
        self.bias = np.zeros(self.units, dtype=dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        self._z = z = x @ self.kernel + self.bias
        if self.activation == "relu":
            return np.maximum(z, 0)
        if self.activation == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return z

    def backward(self, grad: np.ndarray, *, wrt_logits: bool = False
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(d input, {"kernel": d kernel, "bias": d bias})`` from d output.

        With ``wrt_logits`` the gradient is already with respect to ``x @ kernel + bias``
        (the loss fuses softmax and cross-entropy, which is simpler and more stable).
        """
        assert self._x is not None and self._z is not None, "backward() before forward()"
        if not wrt_logits and self.activation == "relu":
            grad = grad * (self._z > 0)
        elif not wrt_logits and self.activation == "softmax":
            raise NotImplementedError("softmax is only differentiated together with the loss")
        return grad @ self.kernel.T, {"kernel": self._x.T @ grad, "bias": grad.sum(axis=0)}

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "units": self.units, "activation": self.activation}


def _sparse_ce(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against labels, and its logits gradient."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    loss = -log_p[rows, y].mean()
    grad = np.exp(log_p)
    grad[rows, y] -= 1
    return float(loss), grad / len(y)


class Model:
    """A chain of ``Dense`` layers on a flat input, with Keras' training and save API."""

    def __init__(self, layers: Sequence[Dense], input_shape: int | Sequence[int] = 784, *,
                 input_name: str = "digits", name: str = "3_layer_mlp",
                 dtype: str = "float32", seed: int | None = None) -> None:
        """Builds the weights at once (Glorot uniform from ``seed``; None: fresh entropy)."""
        dims = [input_shape] if isinstance(input_shape, int) else list(input_shape)
        if len(dims) != 1:
            raise ValueError(f"only flat inputs are supported, got shape {tuple(dims)}")
        self.layers, self.input_dim = list(layers), int(dims[0])
        self.input_name, self.name, self.dtype = input_name, name, np.dtype(dtype)
        for i, layer in enumerate(self.layers, start=1):
            layer.name = layer.name or f"dense_{i}"
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique (weights are keyed by them): {names}")
        if any(layer.activation == "softmax" for layer in self.layers[:-1]):
            raise ValueError("softmax is only supported on the last layer")
        rng, width = np.random.default_rng(seed), self.input_dim
        for layer in self.layers:
            layer.build(width, rng, self.dtype)
            width = layer.units
        self.optimizer: Optimizer | None = None
        self.loss: str | None = None

    # ------------------------------------------------------------ compute

    def variables(self) -> dict[str, np.ndarray]:
        """The live weight arrays by variable name (``"dense_1/kernel"``), for optimizers."""
        return {f"{layer.name}/{part}": getattr(layer, part)
                for layer in self.layers for part in ("kernel", "bias")}

    def _logits(self, x: np.ndarray) -> np.ndarray:
        self.predict(x)
        logits = self.layers[-1]._z  # the pre-softmax values of that forward pass
        assert logits is not None
        return logits

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, ``[n, units of the last layer]``."""
        h = np.asarray(x, dtype=self.dtype)
        for layer in self.layers:
            h = layer.forward(h)
        return h

    def compute_gradients(self, x: np.ndarray, y: np.ndarray
                          ) -> tuple[float, dict[str, np.ndarray]]:
        """Loss on the batch and its gradient for every variable (no update)."""
        loss, grad = _sparse_ce(self._logits(x), np.asarray(y))
        grads: dict[str, np.ndarray] = {}
        for i, layer in enumerate(reversed(self.layers)):
            grad, parts = layer.backward(grad, wrt_logits=i == 0)
            grads.update({f"{layer.name}/{k}": v for k, v in parts.items()})
        return loss, grads

    def compile(self, optimizer: str | Mapping[str, Any] | Optimizer = "rmsprop",
                loss: str = "sparse_categorical_crossentropy") -> None:
        """Attach an optimizer (name, config dict or instance) and the loss."""
        if loss not in _LOSSES:
            raise ValueError(f"unsupported loss {loss!r}; expected one of {_LOSSES}")
        if self.layers[-1].activation != "softmax":
            raise ValueError(f"{loss} needs a softmax output layer")
        self.optimizer, self.loss = get_optimizer(optimizer), loss
        if self.optimizer.slots is None:  # keep the state of an optimizer passed in
            self.optimizer.build(self.variables())

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One forward, backward and optimizer update; returns the batch loss."""
        if self.optimizer is None:
            raise RuntimeError("call compile() before train_step()")
        loss, grads = self.compute_gradients(x, y)
        self.optimizer.apply(self.variables(), grads)
        return loss

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """``(mean loss, accuracy)`` on ``x, y``."""
        logits = self._logits(x)
        loss, _ = _sparse_ce(logits, np.asarray(y))
        return loss, float(np.mean(logits.argmax(axis=1) == y))

    # ------------------------------------------------------ architecture

    def get_config(self) -> dict[str, Any]:
        """The architecture as JSON/YAML-ready values (no weights, no training config)."""
        return {"name": self.name, "dtype": self.dtype.name,
                "input": {"name": self.input_name, "shape": [self.input_dim]},
                "layers": [{"class_name": "Dense", "config": layer.get_config()}
                           for layer in self.layers]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], seed: int | None = None) -> Model:
        """A new, uncompiled model with this architecture and freshly initialized weights."""
        layers = []
        for entry in config["layers"]:
            if entry["class_name"] != "Dense":
                raise ValueError(f"unknown layer class {entry['class_name']!r}")
            layers.append(Dense(**entry["config"]))
        return cls(layers, config["input"]["shape"], input_name=config["input"]["name"],
                   name=config["name"], dtype=config.get("dtype", "float32"), seed=seed)

    def _serialized(self) -> dict[str, Any]:
        return {"class_name": "Model", "config": self.get_config()}

    def to_json(self, **kwargs: Any) -> str:
        """The architecture as a JSON string (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self._serialized(), **kwargs)

    def to_yaml(self) -> str:
        """The architecture as a YAML string (needs PyYAML: ``pip install ckpt[yaml]``)."""
        return _yaml().safe_dump(self._serialized(), sort_keys=False)

    # ------------------------------------------------------------ weights

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every weight, in Keras order: kernel, bias of each layer."""
        return [getattr(layer, part).copy() for layer in self.layers for part in ("kernel", "bias")]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Set every weight from a :meth:`get_weights`-style list (shapes must match)."""
        if len(weights) != 2 * len(self.layers):
            raise ValueError(f"expected {2 * len(self.layers)} arrays, got {len(weights)}")
        pairs = iter(weights)
        tree = {layer.name: {"kernel": next(pairs), "bias": next(pairs)} for layer in self.layers}
        self._assign(tree, "<set_weights>")

    def _weights_tree(self) -> dict[str, dict[str, np.ndarray]]:
        return {layer.name: {"kernel": layer.kernel.copy(), "bias": layer.bias.copy()}
                for layer in self.layers}

    def _assign(self, tree: Mapping[str, Any], source: str) -> None:
        """Check every layer's arrays against the model first, then copy them all in."""
        problems = []
        for layer in self.layers:
            parts = tree.get(layer.name)
            if not isinstance(parts, Mapping):
                problems.append((layer.name, "missing layer", "kernel and bias", "nothing"))
                continue
            for part in ("kernel", "bias"):
                want = getattr(layer, part).shape
                got = np.shape(parts[part]) if part in parts else None
                if got != want:
                    problems.append((f"{layer.name}/{part}", "shape", str(want), str(got)))
        extra = sorted(set(tree) - {layer.name for layer in self.layers})
        problems += [(name, "unexpected layer", "nothing", "weights") for name in extra]
        if problems:
            raise StateMismatchError(source, problems)
        for layer in self.layers:
            for part in ("kernel", "bias"):
                setattr(layer, part, np.array(tree[layer.name][part], dtype=self.dtype))

    def save_weights(self, path: PathLike) -> None:
        """Write the weights only, as ``{layer name: {"kernel", "bias"}}``."""
        ckpt.save(path, self._weights_tree(),
                  metadata={"format": WEIGHTS_FORMAT, "model": self.name})

    def load_weights(self, path: PathLike) -> None:
        """Read weights from :meth:`save_weights` or :meth:`save` output.

        Raises :class:`ckpt.StateMismatchError` naming each layer whose arrays are
        missing or of another shape, with both shapes. The optimizer is untouched.
        """
        tree = ckpt.load(path)
        names = {layer.name for layer in self.layers}
        if (isinstance(tree, dict) and "weights" in tree and "weights" not in names
                and not names & set(tree)):
            tree = tree["weights"]  # a whole-model file
        self._assign(tree, os.fspath(path))

    # -------------------------------------------------------- whole state

    def state_dict(self) -> dict[str, Any]:
        """``{"weights": {layer: {"kernel", "bias"}}, "optimizer": ...}`` (once compiled)."""
        state: dict[str, Any] = {"weights": self._weights_tree()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output exactly (compile first for optimizer state)."""
        if "optimizer" in state and self.optimizer is None:
            raise RuntimeError("compile() the model before loading optimizer state")
        self._assign(state["weights"], "<state_dict>")
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

    def save(self, path: PathLike) -> None:
        """Architecture, weights, loss, optimizer config and state in one file."""
        training = None
        if self.optimizer is not None:
            training = {"loss": self.loss, "optimizer": self.optimizer.get_config()}
        metadata = {"format": MODEL_FORMAT, "format_version": 1,
                    "model_config": self._serialized(), "training_config": training}
        ckpt.save(path, self.state_dict(), metadata=metadata)


def make_model(units: int = 64, num_classes: int = 10, input_dim: int = 784,
               seed: int | None = None, dtype: str = "float32") -> Model:
    """The seed's functional-API MLP: two ``relu`` layers of ``units`` and a softmax."""
    layers = [Dense(units, "relu", name="dense_1"), Dense(units, "relu", name="dense_2"),
              Dense(num_classes, "softmax", name="predictions")]
    return Model(layers, input_dim, dtype=dtype, seed=seed)


def _from_serialized(data: Any, seed: int | None) -> Model:
    if not isinstance(data, Mapping) or data.get("class_name") != "Model":
        raise ValueError("not a serialized ckpt.demo Model (expected class_name 'Model')")
    return Model.from_config(data["config"], seed=seed)


def model_from_json(text: str, seed: int | None = None) -> Model:
    """Rebuild the architecture from :meth:`Model.to_json`, with fresh weights."""
    return _from_serialized(json.loads(text), seed)


def model_from_yaml(text: str, seed: int | None = None) -> Model:
    """Rebuild the architecture from :meth:`Model.to_yaml`, with fresh weights."""
    return _from_serialized(_yaml().safe_load(text), seed)


def _yaml() -> Any:
    # imported lazily: YAML is an optional extra, JSON covers the same flows
    try:
        import yaml
    except ImportError as error:
        raise ImportError("YAML model configs need PyYAML: pip install ckpt[yaml]") from error
    return yaml


def load_model(path: PathLike, compile: bool = True) -> Model:
    """Bring back a :meth:`Model.save` file: architecture, weights and, with
    ``compile``, the loss and the optimizer with its state (exact resume)."""
    metadata = ckpt.load_metadata(path)
    if not isinstance(metadata, Mapping) or metadata.get("format") != MODEL_FORMAT:
        raise ValueError(f"{os.fspath(path)} is not a model.save() file "
                         "(for weights only, use Model.load_weights)")
    # seed 0: the initial weights are overwritten, so spend no OS entropy on them
    model = _from_serialized(metadata["model_config"], seed=0)
    training = metadata.get("training_config")
    keys = ["weights"]
    if compile and training:
        model.compile(get_optimizer(training["optimizer"]), loss=training["loss"])
        keys.append("optimizer")
    state = ckpt.load(path, keys=keys)
    # keep only what was asked for: a keys= selection may also carry empty containers
    model.load_state_dict({key: state[key] for key in keys})
    return model
