"""Retention policies: union semantics, newest always kept, stable after a restart."""

from __future__ import annotations

import functools
import operator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt
from ckpt.policies import (
    StepInfo,
    check_schedule,
    is_due,
    metric_direction,
    rankable,
    retained_steps,
)

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


# ------------------------------------------- KeepBest direction (issue 11)


@pytest.mark.parametrize("metric, mode", [
    ("val_accuracy", "max"), ("acc", "max"), ("val_acc", "max"), ("valAccuracy", "max"),
    ("sparse_categorical_accuracy", "max"), ("eval/f1", "max"), ("val_auc", "max"),
    ("precision", "max"), ("recall", "max"), ("bleu", "max"),
    ("val_loss", "min"), ("loss", "min"), ("train-error", "min"), ("mse", "min"),
    ("categorical_crossentropy", "min"), ("perplexity", "min"), ("top1_error", "min"),
])
def test_keep_best_infers_the_direction_from_the_name(metric, mode):
    assert metric_direction(metric) == mode
    policy = ckpt.KeepBest(metric)
    assert policy.mode == mode
    infos = [info(1, **{metric: 0.2}), info(2, **{metric: 0.9}), info(3, **{metric: 0.5})]
    assert policy.keep(infos) == ({2} if mode == "max" else {1})


@pytest.mark.parametrize("metric", ["epoch", "lr", "score2", "accuracy_loss", ""])
def test_keep_best_refuses_a_name_without_a_direction_unless_given_a_mode(metric):
    assert metric_direction(metric) is None
    with pytest.raises(ValueError) as raised:
        ckpt.KeepBest(metric)
    assert str(raised.value) == (f"KeepBest cannot tell from the name {metric!r} whether "
                                 "higher or lower is better: pass mode='min' or mode='max'")
    infos = [info(1, **{metric: 1.0}), info(2, **{metric: 2.0})]
    assert ckpt.KeepBest(metric, mode="max").keep(infos) == {2}
    assert ckpt.KeepBest(metric, mode="min").keep(infos) == {1}


def test_explicit_modes_still_win_over_the_name():
    infos = [info(1, val_accuracy=0.2), info(2, val_accuracy=0.9)]
    assert ckpt.KeepBest("val_accuracy", mode="min").keep(infos) == {1}
    spec = ckpt.KeepBest("val_accuracy")
    # the inferred direction is what the manifest records, so readers need not infer
    from ckpt.policies import from_spec, to_spec
    assert to_spec(spec) == [{"policy": "KeepBest", "metric": "val_accuracy", "n": 1,
                              "mode": "max"}]
    assert from_spec(to_spec(spec)).mode == "max"


def test_values_that_cannot_rank_are_skipped_and_crash_nothing():
    odd = [10**400, -10**400, float("nan"), float("inf"), float("-inf"), "NaN", "Infinity",
           True, None, [1.0]]
    infos = [info(step, loss=value) for step, value in enumerate(odd)]
    infos += [info(20, loss=0.7), info(21, loss=0.3), info(22, loss=10**300)]
    assert [rankable(i.metrics["loss"]) for i in infos[:len(odd)]] == [None] * len(odd)
    assert ckpt.KeepBest("loss", n=2).keep(infos) == {20, 21}
    assert ckpt.KeepBest("loss", n=2, mode="max").keep(infos) == {22, 20}
    assert [i.step for i in ckpt.KeepBest("loss", n=9).ranked(infos)] == [21, 20, 22]


# -------------------------------------------------- clock skew (issue 11)


def test_keep_every_seconds_restarts_its_window_when_the_clock_goes_back():
    infos = [info(1, time=100.0), info(2, time=10**9),  # stamped far in the future
             info(3, time=130.0), info(4, time=150.0), info(5, time=200.0),
             info(6, time=190.0)]  # a small step back: a new window, kept
    assert ckpt.KeepEvery(seconds=60).keep(infos) == {1, 2, 3, 5, 6}
    # without skew nothing changes
    steady = [info(s, time=s * 25.0) for s in range(1, 9)]
    assert ckpt.KeepEvery(seconds=60).keep(steady) == {1, 4, 7}


def test_schedule_is_checked():
    assert check_schedule(np.int64(5), 2) == (5, 2.0)
    assert type(check_schedule(np.int64(5), None)[0]) is int
    for every in (True, 2.5, 0, "5"):
        with pytest.raises(ValueError, match=r"save_every must be an int >= 1"):
            check_schedule(every, None)
    for seconds in (0, -1, float("nan"), float("inf"), False):
        with pytest.raises(ValueError, match=r"save_every_seconds must be a finite number"):
            check_schedule(None, seconds)
