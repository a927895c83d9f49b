"""The torch example, SIGKILLed at random moments and rerun, ends bit for bit where an
uninterrupted run ends: parameters, buffers, optimizer, scheduler, data position, RNG."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

import ckpt  # noqa: E402
from tests.conftest import ROOT, assert_tree_equal, rounds  # noqa: E402

pytestmark = pytest.mark.torch

EXAMPLE = ROOT / "examples" / "torch_resume.py"
STEPS = 900
SAVE_EVERY = 7  # not a divisor of the 32-batch epoch: checkpoints land mid-epoch
TIMEOUT = 120


def command(directory) -> list[str]:
    return [sys.executable, str(EXAMPLE), "--dir", str(directory), "--steps", str(STEPS),
            "--save-every", str(SAVE_EVERY)]


def start(directory) -> subprocess.Popen:
    return subprocess.Popen(command(directory), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def wait_for_start(process: subprocess.Popen) -> str:
    """Block until the child prints ``start N`` (its training loop is running)."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("start "):
            return "".join(lines)
    process.wait(TIMEOUT)
    raise AssertionError(f"child ended before training ({process.returncode}):\n"
                         f"{''.join(lines)}{process.stderr.read()}")


def interrupt(directory, rng: random.Random, signum: int) -> str:
    """Run the example and send ``signum`` after a seeded random delay; its output."""
    process = start(directory)
    head = wait_for_start(process)
    time.sleep(rng.uniform(0.0, 0.7))
    process.send_signal(signum)
    out, err = process.communicate(timeout=TIMEOUT)
    if signum == signal.SIGKILL:
        assert process.returncode in (0, -signal.SIGKILL), err
    elif "preempted" in out:
        assert process.returncode == 128 + signum, err  # 143: stopped by SIGTERM, saved
    else:
        assert process.returncode == 0, err  # the signal came after the last step
    return head + out


def run_to_end(directory) -> str:
    result = subprocess.run(command(directory), capture_output=True, text=True,
                            timeout=TIMEOUT, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout




def test_killed_and_resumed_run_ends_bitwise_equal_to_uninterrupted_run(tmp_path):
    # the uninterrupted reference runs alongside the interrupted one (2 cores)
    reference = start(tmp_path / "reference")
    rng = random.Random(20240611)
    interruptions = rounds(6, 20)
    outputs = []
    for number in range(interruptions):
        # one graceful stop among the kills: SIGTERM must save the step it is in
        signum = signal.SIGTERM if number == 1 else signal.SIGKILL
        outputs.append(interrupt(tmp_path / "resumed", rng, signum))
        if "done:" in outputs[-1]:
            break
    outputs.append(run_to_end(tmp_path / "resumed"))
    out, err = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, err

    # the kills really interrupted training, and later runs really resumed
    assert any("preempted" in o for o in outputs), outputs
    assert sum("resumed after step" in o for o in outputs) >= 2, outputs
    assert "resumed after step" in outputs[-1] and "start 1\n" not in outputs[-1]
    assert "start 1\n" in outputs[0]  # a fresh run's first step is 1

    final = STEPS  # steps run 1..STEPS
    expected = ckpt.CheckpointManager(tmp_path / "reference").restore(final)
    resumed_manager = ckpt.CheckpointManager(tmp_path / "resumed")
    actual = resumed_manager.restore(final)
    assert set(expected) == {"model", "optimizer", "scheduler", "sampler", "rng"}
    assert expected["optimizer"]["state"], "the optimizer state was saved"
    assert_tree_equal(expected, actual)
    reference_loss = ckpt.CheckpointManager(tmp_path / "reference").info(final).metrics
    assert resumed_manager.info(final).metrics == reference_loss


def test_example_help_names_every_default() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True,
                            text=True, timeout=TIMEOUT, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for shown in ("run 1..N (default: 200)", "the last one (default: 20)",
                  "samples per step (default: 32)", "torch CPU threads (default: 1)"):
        assert shown in text, shown
