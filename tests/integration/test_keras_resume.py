"""``model.fit`` with ckpt's BackupAndRestore, SIGKILLed and SIGTERMed at random moments
and rerun until done, ends bit for bit where an uninterrupted fit ends: every weight,
every optimizer variable, the metrics' totals, on the torch and the jax backend."""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys

import pytest

import ckpt
from tests.conftest import ROOT, assert_tree_equal, rounds, signal_after_start

EXAMPLE = ROOT / "examples" / "keras_fit.py"
EPOCHS = 8  # 64 batches each (fit lasts seconds); saves every 5 land mid-epoch
TIMEOUT = 240
# tensorflow is opt-in (not installed by the test extra): CKPT_KERAS_TF=1
BACKENDS = ["torch", "jax"] + (["tensorflow"] if os.environ.get("CKPT_KERAS_TF") else [])
# keras is imported only in the children: it reads KERAS_BACKEND when imported
pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                reason="needs keras")


def start(directory, backend: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(EXAMPLE), "--dir", str(directory),
                             "--epochs", str(EPOCHS)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "KERAS_BACKEND": backend})


def interrupted_run(directory, backend: str, rng: random.Random, signum: int) -> str:
    """Start a run, send ``signum`` a random moment after fit began; its output."""
    return signal_after_start(start(directory, backend), rng, signum, TIMEOUT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_fit_ends_bitwise_equal_to_an_uninterrupted_fit(tmp_path, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed")
    reference = start(tmp_path / "reference", backend)
    rng = random.Random(backend)
    outputs = []
    for number in range(rounds(3, 20)):
        signum = signal.SIGTERM if number == 0 else signal.SIGKILL  # fit is long ahead
        outputs.append(interrupted_run(tmp_path / "resumed", backend, rng, signum))
        if "done:" in outputs[-1]:
            break
    final = start(tmp_path / "resumed", backend)
    out, err = final.communicate(timeout=TIMEOUT)
    assert final.returncode == 0, err
    outputs.append(out)
    _, err = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, err

    # SIGTERM saved the batch it was in and stopped fit; later runs resumed mid-epoch
    assert any("preempted" in o for o in outputs), outputs
    resumed_at = [int(o.split("resumed after step ")[1].split()[0]) for o in outputs
                  if "resumed after step" in o]
    assert len(resumed_at) >= 2 and any(step % 64 for step in resumed_at), outputs
    last = EPOCHS * 64
    expected = ckpt.CheckpointManager(tmp_path / "reference").restore(last)
    actual = ckpt.CheckpointManager(tmp_path / "resumed").restore(last)
    assert expected["model"]["optimizer"]["slots"], "optimizer slots were saved"
    assert_tree_equal(expected, actual)
    reference_metrics = ckpt.CheckpointManager(tmp_path / "reference").info(last).metrics
    assert ckpt.CheckpointManager(tmp_path / "resumed").info(last).metrics == reference_metrics
