"""The pure JAX + optax example, SIGKILLed (and once SIGTERMed) at random moments and
rerun, ends bit for bit where an uninterrupted run ends: params, optax state, key."""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

import ckpt  # noqa: E402
from tests.conftest import ROOT, assert_tree_equal, rounds, signal_after_start  # noqa: E402

EXAMPLE = ROOT / "examples" / "jax_resume.py"
STEPS = 400
SAVE_EVERY = 7  # not a divisor of the 32-batch epoch: checkpoints land mid-epoch
TIMEOUT = 180


def command(directory) -> list[str]:
    return [sys.executable, str(EXAMPLE), "--dir", str(directory), "--steps", str(STEPS),
            "--save-every", str(SAVE_EVERY)]


def interrupt(directory, rng: random.Random, signum: int) -> str:
    """Run the example, send ``signum`` a seeded random time after training started."""
    process = subprocess.Popen(command(directory), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    return signal_after_start(process, rng, signum, TIMEOUT)


def test_killed_jax_loop_resumes_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    reference = subprocess.Popen(command(tmp_path / "reference"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT)
    rng = random.Random(12)
    outputs = []
    for number in range(rounds(4, 20)):
        signum = signal.SIGTERM if number == 1 else signal.SIGKILL
        outputs.append(interrupt(tmp_path / "resumed", rng, signum))
        if "done:" in outputs[-1]:
            break
    final_run = subprocess.run(command(tmp_path / "resumed"), capture_output=True, text=True,
                               timeout=TIMEOUT, cwd=ROOT)
    assert final_run.returncode == 0, final_run.stderr
    outputs.append(final_run.stdout)
    _, err = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, err

    assert any("preempted" in o for o in outputs), outputs  # the SIGTERM saved and stopped
    assert sum("resumed after step" in o for o in outputs) >= 2, outputs
    final = STEPS - 1
    expected = ckpt.CheckpointManager(tmp_path / "reference").restore(final)
    actual = ckpt.CheckpointManager(tmp_path / "resumed").restore(final)
    assert set(expected) == {"params", "opt_state", "key", "data"}
    assert_tree_equal(expected, actual)
