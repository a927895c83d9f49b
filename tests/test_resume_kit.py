"""RNGState, DataOrder and TrainingLoop: the pieces of an exact resume."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest

import ckpt


def draw(gen_a, gen_b):
    return (random.random(), np.random.rand(), gen_a.random(), gen_b.integers(1 << 60))


def test_rng_state_round_trips_every_stream(tmp_path):
    gen_a = np.random.default_rng(1)
    gen_b = np.random.Generator(np.random.MT19937(5))
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    rng = ckpt.RNGState(gen_a, gen_b)
    ckpt.save(tmp_path / "r.h5", {"rng": rng})
    expected = draw(gen_a, gen_b), random.gauss(0, 1), np.random.standard_normal()
    draw(gen_a, gen_b)  # move every stream on
    rng.load_state_dict(ckpt.load(tmp_path / "r.h5")["rng"])
    assert (draw(gen_a, gen_b), random.gauss(0, 1), np.random.standard_normal()) == expected


def test_rng_state_checks_its_input():
    with pytest.raises(TypeError, match="Generator"):
        ckpt.RNGState(np.random.RandomState(0))
    state = ckpt.RNGState(np.random.default_rng()).state_dict()
    with pytest.raises(ValueError, match="checkpoint has 1"):
        ckpt.RNGState().load_state_dict(state)


def test_data_order_resumes_mid_epoch_exactly():
    straight = ckpt.DataOrder(10, batch_size=3, seed=4)
    batches = [straight.next_batch().tolist() for _ in range(9)]
    first = ckpt.DataOrder(10, batch_size=3, seed=4)
    resumed_batches = [first.next_batch().tolist() for _ in range(5)]
    second = ckpt.DataOrder(10, batch_size=3, seed=999)
    second.load_state_dict(first.state_dict())
    resumed_batches += [second.next_batch().tolist() for _ in range(4)]
    assert resumed_batches == batches
    # each epoch is a permutation, and epochs differ
    assert sorted(sum(batches[:4], [])) == list(range(10))
    assert sum(batches[:4], []) != sum(batches[4:8], [])


def test_data_order_drop_last_and_iteration():
    order = ckpt.DataOrder(10, batch_size=4, seed=0, drop_last=True)
    assert [len(order.next_batch()) for _ in range(3)] == [4, 4, 4]
    assert order.epoch == 1 and len(order) == 8
    plain = ckpt.DataOrder(5, shuffle=False)
    assert list(plain) == [0, 1, 2, 3, 4] and plain.position == 5
    assert list(plain) == [0, 1, 2, 3, 4] and plain.epoch == 1


class Counter:
    def __init__(self):
        self.value = np.zeros(3)

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value[:] = state["value"]


def test_training_loop_runs_steps_1_to_total_and_checkpoint_n_holds_n_updates(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, save_every=4)
    counter = Counter()
    with ckpt.TrainingLoop(mgr, {"c": counter}, total_steps=6) as loop:
        assert loop.start_step == 1 and loop.resumed_from is None and loop.remaining == 6
        seen = []
        for step in loop:
            counter.value += 1  # one update per step
            seen.append(step)
            loop.report(loss=float(step))
    assert seen == [1, 2, 3, 4, 5, 6]
    assert mgr.all_steps() == [4, 6]  # the schedule plus the final step, no step 0
    assert mgr.info(4).metrics == {"loss": 4.0}
    for step in (4, 6):  # checkpoint N holds the state after N completed updates
        assert (mgr.restore(step)["c"]["value"] == step).all()
    fresh = Counter()
    with ckpt.TrainingLoop(mgr, {"c": fresh}, total_steps=10) as loop:
        assert loop.resumed_from == 6 and loop.start_step == 7 and loop.remaining == 4
        assert (fresh.value == 6).all()
        assert list(loop) == [7, 8, 9, 10]
    assert mgr.latest_step() == 10
    with ckpt.TrainingLoop(mgr, {"c": Counter()}, total_steps=10) as loop:
        assert loop.remaining == 0 and list(loop) == []


@pytest.mark.parametrize("total_steps", [-1, 2.5, True, "3"])
def test_training_loop_refuses_a_bad_total_steps(tmp_path, total_steps):
    mgr = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match=r"total_steps must be an int >= 0, got "):
        ckpt.TrainingLoop(mgr, {}, total_steps=total_steps)


def test_training_loop_saves_and_stops_on_sigterm(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, save_every=100)
    counter = Counter()
    with ckpt.TrainingLoop(mgr, {"c": counter}, total_steps=50) as loop:
        for step in loop:
            counter.value += 1
            if step == 7:
                os.kill(os.getpid(), signal.SIGTERM)
    assert loop.preempted and loop.last_saved == 7
    assert mgr.all_steps() == [7] and (mgr.restore(7)["c"]["value"] == 7).all()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler given back


def test_training_loop_sets_damaged_newer_steps_aside_and_redoes_them(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    for step in range(1, 5):
        mgr.save(step, {"c": {"value": np.full(3, float(step))}})
    (tmp_path / "step_4" / "manifest.json").write_text("{damaged")
    counter = Counter()
    with pytest.warns(UserWarning, match="skipping step 4"):
        loop = ckpt.TrainingLoop(mgr, {"c": counter}, total_steps=5)
    with loop:
        assert loop.resumed_from == 3 and (counter.value == 3).all()
        assert list(loop) == [4, 5]
    assert mgr.all_steps() == [1, 2, 3, 4, 5]
    aside = [n for n in os.listdir(tmp_path) if n.startswith("damaged-step_4-")]
    assert len(aside) == 1 and (tmp_path / aside[0] / "manifest.json").read_text() == "{damaged"
