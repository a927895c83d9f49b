"""``import ckpt`` and numpy-only use import no framework (the adapters load lazily)."""

from __future__ import annotations

from tests.conftest import run_python

FRAMEWORKS = ("torch", "keras", "jax", "jaxlib", "flax", "optax", "tensorflow", "lightning",
              "pytorch_lightning")


def test_import_ckpt_and_a_numpy_save_import_no_framework(tmp_path):
    code = ("import sys, numpy as np, ckpt\n"
            "ckpt.save(sys.argv[1], {'w': np.ones(3), 'n': 1})\n"
            "ckpt.load(sys.argv[1])\n"
            f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])\n")
    assert run_python(code, str(tmp_path / "s.h5")).stdout.strip() == "[]"
