"""JAX arrays, optax NamedTuples and flax NNX state in checkpoints (real jax, optax, flax)."""

from __future__ import annotations

import collections
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")
nnx = pytest.importorskip("flax.nnx")

import ckpt  # noqa: E402


def host_bits(leaf) -> bytes:
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf).tobytes()


def assert_same_pytree(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert isinstance(y, jax.Array) and (x.dtype, x.shape) == (y.dtype, y.shape)
        assert host_bits(x) == host_bits(y)


@pytest.fixture
def train_state():
    params = {"w": jax.random.normal(jax.random.key(0), (4, 3), jnp.bfloat16),
              "b": jnp.arange(3, dtype=jnp.float32), "scale": jnp.float16(-0.0),
              "n": jnp.int8(-7)}
    opt_state = optax.chain(optax.clip(1.0), optax.adam(1e-3)).init(params)
    return {"params": params, "opt_state": opt_state, "key": jax.random.key(3),
            "raw_key": jax.random.PRNGKey(4), "empty": jnp.zeros((0, 2))}


def test_restore_into_a_pytree_gives_its_structure_namedtuples_and_jax_arrays(
        tmp_path, train_state):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, train_state)
    template = jax.tree_util.tree_map(jnp.zeros_like, train_state)
    restored = mgr.restore(into=template)
    assert_same_pytree(train_state, restored)
    assert type(restored["opt_state"][1][0]) is optax.ScaleByAdamState
    assert restored["params"]["w"].dtype == jnp.bfloat16
    assert jnp.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
    assert restored["params"]["b"].sharding == template["params"]["b"].sharding


def test_plain_restore_gives_numpy_arrays_and_tuples(tmp_path, train_state):
    ckpt.save(tmp_path / "s.h5", train_state)
    plain = ckpt.load(tmp_path / "s.h5")
    assert type(plain["opt_state"]) is tuple and type(plain["opt_state"][1][0]) is tuple
    w = plain["params"]["w"]
    assert type(w) is np.ndarray and w.dtype.name == "bfloat16"
    assert w.tobytes() == np.asarray(train_state["params"]["w"]).tobytes()
    assert plain["params"]["scale"].shape == () and plain["empty"].shape == (0, 2)
    assert plain["key"].dtype == np.uint32 and plain["key"].shape == (2,)
    assert np.signbit(plain["params"]["scale"])


def test_a_plain_restore_needs_no_jax(tmp_path, train_state):
    ckpt.save(tmp_path / "s.h5", train_state)
    code = ("import sys, ckpt; t = ckpt.load(sys.argv[1]); "
            "assert 'jax' not in sys.modules, 'jax imported'; "
            "print(t['params']['w'].dtype, t['params']['b'].tolist())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.h5")],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["bfloat16", "[0.0,", "1.0,", "2.0]"]


def test_a_plain_restore_saves_again_bit_for_bit_without_jax(tmp_path, train_state):
    """What a plain restore gives (numpy arrays of ml_dtypes' bfloat16) can be saved
    again, and restored into a numpy template in place; no jax in that process."""
    ckpt.save(tmp_path / "s.h5", train_state)
    code = (
        "import sys, numpy as np, ml_dtypes, ckpt\n"
        "t = ckpt.load(sys.argv[1])\n"
        "t['f8'] = np.arange(6, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn)\n"
        "ckpt.save(sys.argv[2], t)\n"
        "again = ckpt.load(sys.argv[2])\n"
        "for key in ('w', 'b'):\n"
        "    a, b = t['params'][key], again['params'][key]\n"
        "    assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key\n"
        "assert again['f8'].dtype == t['f8'].dtype and again['f8'].tobytes() == t['f8'].tobytes()\n"
        "template = {'f8': np.zeros(6, ml_dtypes.float8_e4m3fn)}\n"
        "kept = template['f8']\n"
        "ckpt.load(sys.argv[2], keys=['f8'], into=template)\n"
        "assert template['f8'].tobytes() == t['f8'].tobytes()\n"
        "assert 'jax' not in sys.modules, 'jax imported'\n"
        "print(again['params']['w'].dtype, again['f8'].dtype, template['f8'] is kept)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.h5"),
                          str(tmp_path / "again.h5")],
                         capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["bfloat16", "float8_e4m3fn"]


def test_shape_and_dtype_mismatches_name_the_key(tmp_path, train_state):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, train_state)
    template = jax.tree_util.tree_map(jnp.zeros_like, train_state)
    template["params"]["b"] = jnp.zeros(4)
    template["params"]["w"] = jnp.zeros((4, 3), jnp.float32)
    with pytest.raises(ckpt.StateMismatchError) as info:
        mgr.restore(into=template)
    message = str(info.value)
    assert "params/b: shape" in message and "params/w: dtype" in message


def test_only_framework_namedtuples_are_stored_as_tuples(tmp_path):
    point = collections.namedtuple("Point", "x y")(1, 2)
    with pytest.raises(ckpt.UnsupportedTypeError, match="Point"):
        ckpt.save(tmp_path / "p.h5", {"p": point})
    ckpt.save(tmp_path / "e.h5", {"e": optax.EmptyState()})
    assert ckpt.load(tmp_path / "e.h5") == {"e": ()}


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.dense = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])

    def __call__(self, x):
        return self.blocks[1](self.blocks[0](self.drop(self.norm(self.dense(x)))))


def test_nnx_module_and_state_round_trip_in_place(tmp_path):
    model = Net(nnx.Rngs(0, dropout=1))
    model(jnp.ones((2, 3)))  # batch statistics and the dropout stream move
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, {"model": model, "state": nnx.state(model)})
    stored = ckpt.load(tmp_path / "step_1" / "state.h5", keys="model")["model"]
    assert set(stored) == {"dense", "norm", "drop", "blocks"} and set(stored["blocks"]) == {0, 1}
    fresh, fresh_state = Net(nnx.Rngs(5, dropout=6)), nnx.state(Net(nnx.Rngs(7)))
    out = mgr.restore(into={"model": fresh, "state": fresh_state})
    assert out["model"] is fresh
    expected = nnx.to_pure_dict(nnx.state(model))
    assert_same_pytree(expected, nnx.to_pure_dict(nnx.state(fresh)))
    assert_same_pytree(expected, nnx.to_pure_dict(fresh_state))
    assert host_bits(fresh(jnp.ones((2, 3)))) == host_bits(model(jnp.ones((2, 3))))


def test_ckpt_show_lists_jax_dtypes(tmp_path, train_state):
    ckpt.save(tmp_path / "s.h5", train_state)
    shown = subprocess.run([sys.executable, "-m", "ckpt.cli", "show", str(tmp_path / "s.h5")],
                           capture_output=True, text=True, check=True).stdout
    assert any(line.split()[:4] == ["params/w", "jax", "bfloat16", "(4,"] for line in
               shown.splitlines()), shown


def test_linen_train_state_round_trips_as_a_new_instance_with_the_template_static_fields(
        tmp_path):
    linen = pytest.importorskip("flax.linen")
    from flax.training import train_state as flax_train_state

    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(3)(linen.relu(linen.Dense(8)(x)))

    net, x = Net(), jnp.ones((2, 4))

    def fresh(seed):
        return flax_train_state.TrainState.create(
            apply_fn=net.apply, params=net.init(jax.random.key(seed), x), tx=optax.adam(1e-2))

    state = fresh(0)
    for _ in range(3):
        grads = jax.grad(lambda p: net.apply(p, x).sum())(state.params)
        state = state.apply_gradients(grads=grads)
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(3, {"train": state})
    template = fresh(1)
    restored = mgr.restore(into={"train": template})["train"]
    assert type(restored) is type(state) and restored is not template
    assert restored.apply_fn is template.apply_fn and restored.tx is template.tx
    assert int(restored.step) == 3
    for saved, back in zip(jax.tree_util.tree_leaves((state.params, state.opt_state)),
                           jax.tree_util.tree_leaves((restored.params, restored.opt_state))):
        assert isinstance(back, jax.Array) and back.dtype == saved.dtype
        assert np.asarray(back).tobytes() == np.asarray(saved).tobytes()
    # training goes on from the restored state exactly as from the saved one
    grads = jax.grad(lambda p: net.apply(p, x).sum())(state.params)
    assert np.array_equal(state.apply_gradients(grads=grads).params["params"]["Dense_0"]["kernel"],
                          restored.apply_gradients(grads=grads).params["params"]["Dense_0"]["kernel"])
    plain = mgr.restore()["train"]  # without a template: the state dict, numpy arrays
    assert set(plain) == {"step", "params", "opt_state"} and isinstance(
        plain["params"]["params"]["Dense_1"]["bias"], np.ndarray)
    wider = flax_train_state.TrainState.create(
        apply_fn=net.apply, params=jax.tree_util.tree_map(
            lambda a: jnp.zeros((a.shape[0] + 1, *a.shape[1:]), a.dtype),
            net.init(jax.random.key(2), x)), tx=optax.adam(1e-2))
    with pytest.raises(ckpt.StateMismatchError, match=r"train/params/params/Dense_0/bias"):
        mgr.restore(into={"train": wider})
