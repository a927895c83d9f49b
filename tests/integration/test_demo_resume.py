"""The demo killed at random moments (SIGKILL) or preempted (SIGTERM) and rerun ends
with a final checkpoint identical, bit for bit, to an uninterrupted run's."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import ckpt
from tests.conftest import ROOT, assert_tree_equal, rounds

STEPS, SAVE_EVERY = 500, 40


def demo(directory, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "ckpt.demo.run", "--dir", str(directory), "--steps", str(STEPS),
         "--save-every", str(SAVE_EVERY), "--seed", "3", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **popen)


def wait_until_training(child):
    line = child.stdout.readline()
    assert line.startswith("checkpoints go to"), line + child.stderr.read()


def final_state(directory):
    mgr = ckpt.CheckpointManager(directory)
    # steps run 1..STEPS and the final checkpoint is step STEPS
    assert mgr.latest_step() == STEPS
    return mgr.restore(STEPS)


def uninterrupted(tmp_path):
    child = demo(tmp_path / "straight")
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert "resumed" not in out and f"done: {STEPS} steps" in out
    steps = ckpt.CheckpointManager(tmp_path / "straight").all_steps()
    assert all(step % SAVE_EVERY == 0 or step == STEPS for step in steps), steps
    return final_state(tmp_path / "straight")


def interrupted(directory, sig, rng, max_signals):
    signals, outputs = 0, []
    while True:
        child = demo(directory)
        wait_until_training(child)
        signalled = signals < max_signals
        if signalled:
            if signals == 0 and sig == signal.SIGKILL:
                # the first kill lands after a checkpoint exists, so that at least one
                # run resumes whatever this machine's speed (a slow start saved nothing)
                deadline = time.monotonic() + 60
                while not any(directory.glob("step_*")) and time.monotonic() < deadline:
                    time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.2))
            child.send_signal(sig)
            signals += 1
        out, err = child.communicate(timeout=300)
        outputs.append(out)
        if sig == signal.SIGTERM and "interrupted: saved step" in out:
            assert child.returncode == 143, err  # 128 + SIGTERM, after saving
        elif sig == signal.SIGTERM or child.returncode == 0 or not signalled:
            # a run that was not signalled must finish: one that fails on its own
            # (a resume that cannot read what the kill left) fails the test instead of
            # being rerun for ever
            assert child.returncode == 0, err
        # a kill after the final checkpoint but before the exit leaves nothing to do:
        # the rerun says so instead of "done" (it was rerun for ever, until CI's time
        # ran out)
        finished = (f"done: {STEPS} steps" in out
                    or f"nothing to do: already trained to step {STEPS}" in out)
        if not signalled:
            assert finished, out
        if child.returncode == 0 and finished:
            return outputs


def test_sigkill_at_random_moments_then_rerun_gives_identical_final_checkpoint(tmp_path):
    reference = uninterrupted(tmp_path)
    # a kill after the final checkpoint leaves a directory such as this finished one:
    # its rerun has nothing to do, and that ends the run as "done" does
    rerun = interrupted(tmp_path / "straight", signal.SIGKILL, random.Random(7), 0)
    assert "nothing to do: already trained to step" in rerun[0]
    outputs = interrupted(tmp_path / "killed", signal.SIGKILL, random.Random(7), rounds(4, 40))
    assert any("resumed from step" in out for out in outputs)
    assert_tree_equal(reference, final_state(tmp_path / "killed"))


def test_sigterm_saves_at_the_next_step_and_resumes_exactly(tmp_path):
    reference = uninterrupted(tmp_path)
    outputs = interrupted(tmp_path / "term", signal.SIGTERM, random.Random(11), 2)
    preempted = [out for out in outputs if "interrupted: saved step" in out]
    assert preempted, outputs
    for out in preempted:
        step = int(out.split("interrupted: saved step ")[1].split(";")[0])
        # the preemption save happened at the step in progress, not on the schedule
        assert f"resumed from step {step}" in "".join(outputs)
    assert_tree_equal(reference, final_state(tmp_path / "term"))
