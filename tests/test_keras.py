"""Keras 3 objects in checkpoints, whole-model files and JSON/YAML, on every backend.

Each backend runs the checks of ``tests/keras_checks.py`` in one child process:
Keras picks its backend when it is imported, once per process.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests import keras_checks_names
from tests.conftest import run_python

BACKENDS = ["torch", "jax"] + (["tensorflow"] if os.environ.get("CKPT_KERAS_TF") else [])
pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                reason="needs keras")


@pytest.fixture(scope="module", params=BACKENDS)
def checked(request, tmp_path_factory) -> tuple[str, str]:
    backend = request.param
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed")
    code = "import runpy, sys; runpy.run_module('tests.keras_checks', run_name='__main__')"
    result = run_python(code, str(tmp_path_factory.mktemp(backend)), timeout=300,
                        env={"KERAS_BACKEND": backend}, check=False)
    return result.stdout, result.stderr


@pytest.mark.parametrize("name", keras_checks_names.NAMES)
def test_keras_check_passes(checked, name):
    out, err = checked
    assert f"ok {name}" in out.splitlines(), err[-3000:]
