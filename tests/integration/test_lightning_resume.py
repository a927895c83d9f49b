"""``Trainer.fit`` with ckpt's ``BackupAndRestore``, stopped by a step limit, SIGTERMed and
SIGKILLed mid-epoch and rerun, ends bit for bit where an uninterrupted fit ends: weights,
optimizer, scheduler, ``trainer.global_step`` and every counter of Lightning's fit loop."""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import pytest

pytest.importorskip("lightning")

import ckpt  # noqa: E402
from tests.conftest import ROOT, assert_tree_equal, rounds, signal_after_start  # noqa: E402

pytestmark = pytest.mark.torch

EXAMPLE = ROOT / "examples" / "lightning_fit.py"
EPOCHS = rounds(4, 10)  # soak: long enough for all its interruptions
BATCHES = 64  # 2048 samples in batches of 32; validation after batches 32 and 64
SAVE_EVERY = 8  # every 4th save falls on a validation, which the save waits for
FINAL = EPOCHS * BATCHES
TIMEOUT = 180


def command(directory, *extra: str) -> list[str]:
    return [sys.executable, str(EXAMPLE), "--dir", str(directory), "--epochs", str(EPOCHS),
            "--save-every", str(SAVE_EVERY), *extra]


def run(directory, *extra: str) -> str:
    result = subprocess.run(command(directory, *extra), capture_output=True, text=True,
                            timeout=TIMEOUT, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def interrupt(directory, rng: random.Random, signum: int) -> str:
    """Run the example, send ``signum`` a seeded 0.1-1 s after its first step; its output."""
    process = subprocess.Popen(command(directory), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if signum == signal.SIGKILL:
        return signal_after_start(process, rng, signum, TIMEOUT)
    # every SIGTERM is sent with more than a second of training left: saved, stopped, 143
    out = signal_after_start(process, rng, signum, TIMEOUT, exit_codes=(128 + signum,))
    assert "preempted at step" in out, out
    return out


def test_fit_stopped_killed_and_rerun_ends_bitwise_equal_to_an_uninterrupted_fit(tmp_path):
    # the uninterrupted reference runs alongside the interrupted one (2 cores)
    reference = subprocess.Popen(command(tmp_path / "reference", "--final",
                                         str(tmp_path / "reference.h5")),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=ROOT)
    resumed = tmp_path / "resumed"
    # a step limit ends the first fit at a validation step (step 32): its save waits for
    # the validation, and the next fit must not run that validation again
    outputs = [run(resumed, "--max-steps", "32")]
    assert "done: step 32," in outputs[0] and "start 1\n" in outputs[0]
    rng = random.Random(20261203)
    signals = []
    for number in range(rounds(3, 12)):
        # only while 1.5 epochs (about 2 s) are left: every signal lands in training,
        # and the last run trains to the end rather than reloading a finished fit
        if ckpt.CheckpointManager(resumed).latest_step() >= FINAL - 96:
            break
        signals.append(signal.SIGTERM if number % 3 == 0 else signal.SIGKILL)
        outputs.append(interrupt(resumed, rng, signals[-1]))
    outputs.append(run(resumed, "--final", str(tmp_path / "resumed.h5")))
    out, err = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, err

    assert "resumed after step 32\nstart 33\n" in outputs[1]
    assert all("start 1\n" not in o for o in outputs[1:]), outputs
    assert signals[:2] == [signal.SIGTERM, signal.SIGKILL], signals
    assert sum("resumed after step" in o for o in outputs) >= 3, outputs
    assert "start" in outputs[-1], "the last run trained (it did not resume a finished fit)"

    # the trainer's live state after fit returned, in both runs
    expected = ckpt.load(tmp_path / "reference.h5")
    actual = ckpt.load(tmp_path / "resumed.h5")
    assert expected["global_step"] == FINAL and expected["epoch"] == EPOCHS
    assert expected["optimizer"]["state"], "AdamW has state"
    assert_tree_equal(expected, actual)

    # the last checkpoints, whole: Lightning's checkpoint dict plus data position and RNG
    reference_manager = ckpt.CheckpointManager(tmp_path / "reference")
    resumed_manager = ckpt.CheckpointManager(resumed)
    kept = [FINAL - 16, FINAL - 8, FINAL]  # KeepLast(3)
    assert reference_manager.all_steps() == resumed_manager.all_steps() == kept
    final = resumed_manager.restore(FINAL)
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks",
            "hyper_parameters"} <= set(final)
    assert_tree_equal(reference_manager.restore(FINAL), final)

    listing = subprocess.run([sys.executable, "-m", "ckpt.cli", "ls", str(resumed)],
                             capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert listing.returncode == 0, listing.stderr
    assert [int(line.split()[0]) for line in listing.stdout.splitlines()[1:-1]] == kept
