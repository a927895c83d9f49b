"""SGD, RMSprop and Adam in numpy, with Keras' update rules and full, exact state.

Each optimizer keeps per-variable *slots* (zeros at :meth:`Optimizer.build`) and an
iteration counter. ``state_dict()`` exports both as plain arrays and ints, and
``load_state_dict()`` puts them back so that training continues bit for bit. The
hyperparameters are not state: they live in ``get_config()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ckpt.errors import StateMismatchError

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "get_optimizer"]


class Optimizer:
    """Base class: slot bookkeeping, state export/import and config round trips."""

    name: ClassVar[str] = "optimizer"

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = float(learning_rate)
        self.iterations = 0
        # {variable name: {slot name: array}}; None until build()
        self.slots: dict[str, dict[str, np.ndarray]] | None = None

    def slot_names(self) -> tuple[str, ...]:
        """Names of the per-variable slots this configuration needs."""
        return ()

    def build(self, params: Mapping[str, np.ndarray]) -> None:
        """Create zero slots for ``params`` (variable name -> array); resets the state."""
        self.iterations = 0
        self.slots = {name: {slot: np.zeros_like(value) for slot in self.slot_names()}
                      for name, value in params.items()}

    def apply(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """One update of every array in ``params`` in place, from ``grads``."""
        if self.slots is None:
            self.build(params)
        assert self.slots is not None
        for name, value in params.items():
            self._update(value, grads[name], self.slots[name])
        self.iterations += 1

    def _update(self, value: np.ndarray, grad: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """``{"iterations": int, "slots": {variable: {slot: array}}}``, as copies."""
        slots = self.slots or {}
        return {"iterations": self.iterations,
                "slots": {name: {slot: array.copy() for slot, array in per_var.items()}
                          for name, per_var in slots.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; every slot is checked against the build.

        Raises :class:`ckpt.StateMismatchError` listing every missing, extra or
        differently shaped slot (for a built optimizer).
        """
        slots = {name: {slot: np.array(array, copy=True) for slot, array in per_var.items()}
                 for name, per_var in state["slots"].items()}
        if self.slots is not None:
            problems = _compare(self.slots, slots)
            if problems:
                raise StateMismatchError(f"<{type(self).__name__} state>", problems)
        self.slots = slots
        self.iterations = int(state["iterations"])

    # ----------------------------------------------------------- config

    def get_config(self) -> dict[str, Any]:
        """Hyperparameters as JSON-ready values, with ``"name"`` for :func:`get_optimizer`."""
        return {"name": self.name, "learning_rate": self.learning_rate}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Optimizer:
        """A fresh (unbuilt, iteration 0) optimizer with the hyperparameters in ``config``."""
        kwargs = {k: v for k, v in config.items() if k != "name"}
        return cls(**kwargs)


def _compare(expected: Mapping[str, Mapping[str, np.ndarray]],
             found: Mapping[str, Mapping[str, np.ndarray]]) -> list[tuple[str, str, str, str]]:
    """Every (key, kind, expected, found) difference between two slot trees."""
    problems = []
    for name in sorted(expected.keys() | found.keys()):
        want, got = expected.get(name), found.get(name)
        if want is None or got is None:
            problems.append((f"slots/{name}", "missing" if got is None else "unexpected",
                             _presence(want), _presence(got)))
            continue
        for slot in sorted(want.keys() | got.keys()):
            a, b = want.get(slot), got.get(slot)
            key = f"slots/{name}/{slot}"
            if a is None or b is None:
                problems.append((key, "missing" if b is None else "unexpected",
                                 _presence(a), _presence(b)))
            elif a.shape != b.shape or a.dtype != b.dtype:
                problems.append((key, "shape/dtype", f"{a.shape} {a.dtype}",
                                 f"{b.shape} {b.dtype}"))
    return problems


def _presence(value: Any) -> str:
    return "absent" if value is None else "present"


class SGD(Optimizer):
    """Keras SGD: ``m = momentum * m - lr * g; w += m`` (plain ``w -= lr * g`` at 0)."""

    name = "sgd"

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(learning_rate)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def slot_names(self) -> tuple[str, ...]:
        # like Keras, no momentum buffer exists (or is saved) without momentum
        return ("momentum",) if self.momentum > 0 else ()

    def _update(self, value: np.ndarray, grad: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        if not slots:
            value -= self.learning_rate * grad
            return
        m = slots["momentum"]
        m *= self.momentum
        m -= self.learning_rate * grad
        if self.nesterov:
            value += self.momentum * m - self.learning_rate * grad
        else:
            value += m

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class RMSprop(Optimizer):
    """Keras RMSprop: ``ms = rho * ms + (1 - rho) * g**2``, step ``lr * g / (sqrt(ms) + eps)``."""

    name = "rmsprop"

    def __init__(self, learning_rate: float = 0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7) -> None:
        super().__init__(learning_rate)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def slot_names(self) -> tuple[str, ...]:
        return ("ms", "momentum") if self.momentum > 0 else ("ms",)

    def _update(self, value: np.ndarray, grad: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        ms = slots["ms"]
        ms *= self.rho
        ms += (1.0 - self.rho) * np.square(grad)
        increment = self.learning_rate * grad / (np.sqrt(ms) + self.epsilon)
        if "momentum" in slots:
            mom = slots["momentum"]
            mom *= self.momentum
            mom += increment
            increment = mom
        value -= increment

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon}


class Adam(Optimizer):
    """Keras Adam, with the bias correction folded into the step size."""

    name = "adam"

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7) -> None:
        super().__init__(learning_rate)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self._lr_t = self.learning_rate  # bias-corrected step size of the current update

    def slot_names(self) -> tuple[str, ...]:
        return ("m", "v")

    def apply(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        # the step size depends only on the counter, so compute it once per step
        t = self.iterations + 1
        self._lr_t = (self.learning_rate * (1.0 - self.beta_2**t) ** 0.5
                      / (1.0 - self.beta_1**t))
        super().apply(params, grads)

    def _update(self, value: np.ndarray, grad: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        m, v = slots["m"], slots["v"]
        m += (grad - m) * (1.0 - self.beta_1)
        v += (np.square(grad) - v) * (1.0 - self.beta_2)
        value -= self._lr_t * m / (np.sqrt(v) + self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


_OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, RMSprop, Adam)}


def get_optimizer(identifier: str | Mapping[str, Any] | Optimizer) -> Optimizer:
    """An optimizer from a name (``"sgd"``, ``"rmsprop"``, ``"adam"``), a
    :meth:`Optimizer.get_config` dict, or an instance (returned as is)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        name, config = identifier, {}
    elif isinstance(identifier, Mapping):
        name, config = identifier.get("name", ""), identifier
    else:
        raise TypeError(f"cannot build an optimizer from {type(identifier).__name__}")
    cls = _OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_OPTIMIZERS)}")
    return cls.from_config(config)
