"""Listing many checkpoints (issue 15): newest-first ``latest_step``, pruning that
reads only the manifests it needs, and the listing cache that stays a cache."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.policies import StepInfo, decides_by_step, retained_steps


def clone_steps(directory: Path, steps: list[int]) -> None:
    """Step directories for ``steps`` made by copying one real checkpoint and
    rewriting its manifest's step, time and metric (a real save each would take
    seconds for the thousands of steps these tests need)."""
    seed = directory / ".seed"
    ckpt.CheckpointManager(seed).save(0, {"w": np.arange(4.0)}, metrics={"loss": 1.0})
    record = json.loads((seed / "step_0" / "manifest.json").read_bytes())
    for step in steps:
        target = directory / f"step_{step}"
        shutil.copytree(seed / "step_0", target)
        record.update(step=step, time=1.7e9 + step, metrics={"loss": 1.0 / (step + 1)})
        (target / "manifest.json").write_text(json.dumps(record, separators=(",", ":")))
    shutil.rmtree(seed)


def damage(directory: Path, step: int) -> None:
    (directory / f"step_{step}" / "manifest.json").write_text("{not json")


def test_latest_step_skips_damaged_newest_steps(tmp_path):
    clone_steps(tmp_path, [1, 2, 3, 4])
    damage(tmp_path, 4)
    damage(tmp_path, 3)
    mgr = ckpt.CheckpointManager(tmp_path)
    assert mgr.latest_step() == 2 and mgr.all_steps() == [1, 2]


POLICIES = [ckpt.KeepLast(1), ckpt.KeepLast(3), ckpt.KeepEvery(steps=4), ckpt.KeepAll(),
            ckpt.KeepLast(2) | ckpt.KeepEvery(steps=5)]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_pruning_by_step_deletes_what_pruning_over_every_manifest_deletes(tmp_path, policy):
    """The reading-few path must agree with the policy over all valid manifests,
    damaged steps (never deleted, never counted as kept) included."""
    assert decides_by_step(policy)
    rng = random.Random(repr(policy))
    for trial in range(4):
        directory = tmp_path / str(trial)
        steps = sorted(rng.sample(range(40), 14))
        clone_steps(directory, steps)
        damaged = set(rng.sample(steps[:-1], 4))  # the newest stays valid: the new save
        for step in damaged:
            damage(directory, step)
        valid = [StepInfo(step=s, time=0.0) for s in steps if s not in damaged]
        expected = retained_steps(policy, valid) | damaged
        mgr = ckpt.CheckpointManager(directory, keep=policy)
        mgr._prune()
        on_disk = {int(p.name[5:]) for p in directory.glob("step_*")}
        assert on_disk == expected, (steps, damaged)


def test_policies_that_need_manifests_are_not_decided_by_step():
    assert not decides_by_step(ckpt.KeepBest("loss"))
    assert not decides_by_step(ckpt.KeepEvery(seconds=5))
    assert not decides_by_step(ckpt.KeepLast(2) | ckpt.KeepBest("loss"))

    class Mine(ckpt.KeepLast):
        pass

    assert not decides_by_step(Mine(2))  # a subclass may decide otherwise
