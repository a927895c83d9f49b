"""``RNGState``: every random stream a training loop draws from, as one stateful item."""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np

__all__ = ["RNGState"]


class RNGState:
    """Capture and restore Python's ``random``, numpy's global ``RandomState``, the
    given ``np.random.Generator``/``torch.Generator`` objects (restored in place),
    and torch's CPU and CUDA default generators when torch is already imported.

    Put it in the state you save: ``state = {"model": ..., "rng": RNGState(gen)}``.
    torch is never imported by this class: a program that does not use torch does
    not pay for it, and one that does has imported it already.
    """

    def __init__(self, *generators: Any) -> None:
        for generator in generators:
            if not (isinstance(generator, np.random.Generator) or _is_torch_generator(generator)):
                raise TypeError("RNGState takes np.random.Generator or torch.Generator "
                                f"objects, got {type(generator).__name__}")
        self.generators = generators

    def state_dict(self) -> dict[str, Any]:
        """All streams' states as a tree of arrays, ints and strings."""
        version, internal, gauss_next = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "python": {"version": version, "state": np.array(internal, dtype=np.int64),
                       "gauss_next": gauss_next},
            "numpy": {"bit_generator": name, "key": keys, "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "generators": [_generator_state(g) for g in self.generators],
        }
        torch = sys.modules.get("torch")
        if torch is not None:
            state["torch"] = {"cpu": torch.get_rng_state().numpy()}
            if torch.cuda.is_available():
                state["torch"]["cuda"] = [s.numpy() for s in torch.cuda.get_rng_state_all()]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put every stream back where :meth:`state_dict` found it."""
        saved = state["generators"]
        if len(saved) != len(self.generators):
            raise ValueError(f"RNGState holds {len(self.generators)} generators but the "
                             f"checkpoint has {len(saved)}")
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]),
                         py["gauss_next"]))
        npg = state["numpy"]
        np.random.set_state((npg["bit_generator"], np.asarray(npg["key"], dtype=np.uint32),
                             int(npg["pos"]), int(npg["has_gauss"]),
                             float(npg["cached_gaussian"])))
        for generator, generator_state in zip(self.generators, saved):
            _set_generator_state(generator, generator_state)
        torch = sys.modules.get("torch")
        if torch is not None and "torch" in state:
            torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"]["cpu"])))
            if "cuda" in state["torch"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(
                    [torch.from_numpy(np.asarray(s)) for s in state["torch"]["cuda"]])


def _is_torch_generator(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Generator)


def _generator_state(generator: Any) -> dict[str, Any]:
    if isinstance(generator, np.random.Generator):
        return {"numpy": generator.bit_generator.state}
    return {"torch": generator.get_state().numpy()}


def _set_generator_state(generator: Any, state: dict[str, Any]) -> None:
    if isinstance(generator, np.random.Generator):
        if "numpy" not in state:
            raise ValueError("checkpoint holds a torch generator state for a numpy Generator")
        generator.bit_generator.state = state["numpy"]
        return
    import torch

    generator.set_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8)))

