"""Shared fixtures and helpers for the ckpt test suite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.s3_server import s3, s3_server  # noqa: F401 - fixtures for the object-store tests

ROOT = Path(__file__).resolve().parents[1]

# Opt-in long runs: CKPT_SOAK=1 multiplies crash rounds and fuzz cases.
SOAK = os.environ.get("CKPT_SOAK", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    """Soak rounds run for many minutes a test: the default suite's 900 s limit on a
    hung test (pyproject.toml) becomes 2 hours there."""
    if SOAK:
        for item in items:
            item.add_marker(pytest.mark.timeout(7200))


def rounds(default: int, soak: int) -> int:
    """How many rounds a crash/fuzz test runs: ``default``, or ``soak`` with CKPT_SOAK=1."""
    return soak if SOAK else default


def run_python(code: str, *args: str, env: dict | None = None, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (real process) and return the result."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                            text=True, timeout=timeout, env=full_env, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"child failed ({result.returncode}):\n{result.stderr}")
    return result


def kill_after_ready(args: list[str], seconds: float) -> str:
    """Run ``python args...``, which prints ``ready`` first, SIGKILL it ``seconds``
    after that line, and return what it printed after it."""
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(seconds)
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate()
    assert child.returncode == -signal.SIGKILL
    return out


def signal_after_start(process: subprocess.Popen, rng, signum: int, timeout: float,
                       exit_codes: tuple[int, ...] | None = None) -> str:
    """Wait for a training example's ``start N`` line, send ``signum`` a seeded random
    0.1-1 s later, and return all it printed; it must exit with one of ``exit_codes``
    (default: 0, or death by SIGKILL)."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("start "):
            break
    time.sleep(rng.uniform(0.1, 1.0))
    process.send_signal(signum)
    out, err = process.communicate(timeout=timeout)
    allowed = exit_codes or ((0, -signal.SIGKILL) if signum == signal.SIGKILL else (0,))
    assert process.returncode in allowed, err
    return "".join(lines) + out


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")  # never import torch for a numpy-only test
    return torch is not None and isinstance(value, torch.Tensor)


def tensor_bits(tensor) -> bytes:
    """A torch tensor's bytes, whatever its dtype and strides."""
    import torch

    uint = {1: torch.uint8, 2: torch.uint16, 4: torch.uint32, 8: torch.uint64}
    tensor = tensor.detach().cpu()
    if tensor.dtype.itemsize in uint:  # shell dtypes (uint4, ...) cannot be copied as such
        tensor = tensor.view(uint[tensor.dtype.itemsize])
    return tensor.contiguous().numpy().tobytes()  # numpy copes with any strides


def assert_tree_equal(a, b, path="root"):
    """Exact equality: same container types, key types, order; leaves bit for bit."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        assert [type(k) for k in a] == [type(k) for k in b], path
        for k in a:
            assert_tree_equal(a[k], b[k], f"{path}/{k!r}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{path}/{i}")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape}"
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
    elif _is_tensor(a):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{path}: {a.dtype}{a.shape}"
        assert tensor_bits(a) == tensor_bits(b), f"{path}: bits differ"
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes(), path
    elif isinstance(a, complex):
        assert np.complex128(a).tobytes() == np.complex128(b).tobytes(), path
    else:
        assert a == b, path


@pytest.fixture
def small_state():
    rng = np.random.default_rng(0)
    return {
        "model": {"w": rng.standard_normal((300, 100)).astype(np.float32),
                  "b": np.zeros(100, np.float32)},
        "opt": {"state": {0: {"m": rng.standard_normal(50)}}, "lr": 0.1},
        "step": 7,
    }


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs: a disk that fills up. CI runs as root, so mount works."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                   check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def loader_context():
    """A multiprocessing context for DataLoader workers that is safe beside JAX.

    test_jax imports jax into the pytest process, and forking a process that runs
    JAX's threads may deadlock; workers forked from a clean forkserver (torch
    preloaded, so they start fast) cannot inherit them.
    """
    if "jax" not in sys.modules:
        return None
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "ckpt"])
    return context
