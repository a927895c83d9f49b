"""Retention policies: union semantics, newest always kept, stable after a restart."""

from __future__ import annotations

import functools
import operator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt
from ckpt.policies import StepInfo, is_due, retained_steps

infos_strategy = st.lists(
    st.tuples(st.integers(0, 500), st.floats(0, 1000), st.one_of(st.none(), st.floats(-5, 5))),
    max_size=25, unique_by=lambda t: t[0],
).map(lambda rows: [StepInfo(step=s, time=t, metrics={} if m is None else {"loss": m})
                    for s, t, m in sorted(rows)])

policies = st.one_of(
    st.integers(1, 5).map(ckpt.KeepLast),
    st.integers(1, 50).map(lambda n: ckpt.KeepEvery(steps=n)),
    st.floats(1, 300).map(lambda s: ckpt.KeepEvery(seconds=s)),
    st.tuples(st.integers(1, 3), st.sampled_from(["min", "max"])).map(
        lambda a: ckpt.KeepBest("loss", n=a[0], mode=a[1])),
    st.just(ckpt.KeepAll()),
)


@settings(max_examples=300, deadline=None)
@given(infos=infos_strategy, parts=st.lists(policies, min_size=1, max_size=3))
def test_union_keeps_what_any_policy_keeps_and_always_the_newest(infos, parts):
    kept = retained_steps(functools.reduce(operator.or_, parts), infos)
    expected = set().union(*(p.keep(infos) for p in parts))
    if infos:
        expected.add(infos[-1].step)
    assert kept == expected
    assert kept <= {i.step for i in infos}


@settings(max_examples=300, deadline=None)
@given(infos=infos_strategy, parts=st.lists(policies, min_size=1, max_size=3))
def test_pruning_is_stable_after_restart(infos, parts):
    """Recomputing over what survived keeps exactly the same set (nothing more goes)."""
    combined = functools.reduce(operator.or_, parts)
    kept = retained_steps(combined, infos)
    survivors = [i for i in infos if i.step in kept]
    assert retained_steps(combined, survivors) == kept


def info(step, time=0.0, **metrics):
    return StepInfo(step=step, time=time, metrics=metrics)


def test_each_policy():
    infos = [info(s, time=s * 10.0, loss=abs(s - 30) + 0.5) for s in range(0, 100, 10)]
    assert ckpt.KeepLast(2).keep(infos) == {80, 90}
    assert ckpt.KeepEvery(steps=30).keep(infos) == {0, 30, 60, 90}
    assert ckpt.KeepEvery(seconds=250).keep(infos) == {0, 30, 60, 90}
    assert ckpt.KeepBest("loss", n=2).keep(infos) == {30, 20}
    assert ckpt.KeepBest("loss", n=1, mode="max").keep(infos) == {90}
    assert ckpt.KeepAll().keep(infos) == {s for s in range(0, 100, 10)}
    nan = [info(1, loss=float("nan")), info(2), info(3, loss=4.0)]
    assert ckpt.KeepBest("loss").keep(nan) == {3}


def test_policy_arguments_are_checked():
    for make in (lambda: ckpt.KeepLast(0), lambda: ckpt.KeepEvery(),
                 lambda: ckpt.KeepEvery(steps=3, seconds=2),
                 lambda: ckpt.KeepBest("x", mode="best")):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(TypeError):
        ckpt.KeepLast(1) | 3


def test_schedule():
    assert is_due(7, 0.0, None, every=None, every_seconds=None)
    assert is_due(10, 0.0, None, every=5, every_seconds=None)
    assert not is_due(11, 0.0, None, every=5, every_seconds=None)
    assert not is_due(11, 100.0, 95.0, every=5, every_seconds=10)
    assert is_due(11, 106.0, 95.0, every=5, every_seconds=10)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(losses=st.lists(st.floats(0, 10), min_size=1, max_size=12), n_last=st.integers(1, 3))
def test_manager_retention_matches_policy_and_survives_restart(tmp_path_factory, losses, n_last):
    directory = tmp_path_factory.mktemp("ret")
    keep = ckpt.KeepLast(n_last) | ckpt.KeepBest("loss", n=1)
    infos = []
    for step, loss in enumerate(losses):
        # a fresh manager per save: every decision is made from what is on disk
        mgr = ckpt.CheckpointManager(directory, keep=keep)
        mgr.save(step, {"x": np.float32(loss)}, metrics={"loss": loss})
        infos.append(info(step, loss=loss))
        expected = retained_steps(keep, [i for i in infos if i.step in set(mgr.all_steps())
                                         or i.step == step])
        assert set(mgr.all_steps()) == expected
    best = min(range(len(losses)), key=lambda s: (losses[s], s))
    assert ckpt.CheckpointManager(directory, keep=keep).best_step() == best
    assert best in ckpt.CheckpointManager(directory).all_steps()
