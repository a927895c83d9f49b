"""Tree round trips through ckpt.save/load: containers, keys and leaves, bit for bit."""

from __future__ import annotations

import collections
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ckpt
from ckpt.tree import flatten, keystr
from tests.conftest import assert_tree_equal

DTYPES = ["<f2", "<f4", "<f8", ">f4", ">f8", "<i1", "<i2", "<i4", "<i8", ">i8", "<u1", "<u2",
          "<u4", "<u8", "|b1", "<c8", "<c16", ">c16", "<M8[ns]", "<m8[s]", "|S5", "<U3"]


def arrays():
    return st.sampled_from(DTYPES).flatmap(
        lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3,
                                                             min_side=0, max_side=6)))


def big_arrays():
    # large enough to get its own HDF5 dataset instead of a pack
    return st.sampled_from(["<f4", ">f8", "<i2", "|b1", "<c8"]).flatmap(
        lambda dt: hnp.arrays(np.dtype(dt), st.just((130, 70)), elements=None, fill=None))


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.complex_numbers(allow_nan=True), st.text(), st.binary(),
    st.sampled_from([np.float32(1.5), np.int8(-3), np.bool_(True), np.complex64(1j),
                     np.uint64(2**64 - 1), np.float16(-0.0), np.str_("x"), np.bytes_(b"y")]),
)
keys = st.one_of(st.text(max_size=6), st.integers(-5, 5))
leaves = st.one_of(scalars, arrays())
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.dictionaries(keys, children, max_size=3).map(collections.OrderedDict),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_tree_round_trips_through_save_and_load(tmp_path, tree):
    path = tmp_path / "t.h5"
    ckpt.save(path, tree)
    assert_tree_equal(tree, ckpt.load(path))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(keys, big_arrays(), min_size=1, max_size=3))
def test_large_arrays_round_trip(tmp_path, tree):
    path = tmp_path / "big.h5"
    ckpt.save(path, tree)
    assert_tree_equal(tree, ckpt.load(path))


def nan_with_payload(payload: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000000 | payload))[0]


def test_special_values_bit_for_bit(tmp_path):
    f32_nan = np.array([0x7FC00001, 0xFFA00002, 0x80000000], dtype="<u4").view("<f4")
    tree = {
        "nan": nan_with_payload(0x12345),
        "neg_zero": -0.0,
        "nan_array": f32_nan,
        "big_nan_array": np.tile(f32_nan, 30000),
        "noncontig": np.arange(200000.0).reshape(400, 500)[::3, ::7],
        "fortran": np.asfortranarray(np.arange(12).reshape(3, 4)),
        "big_endian": np.arange(10, dtype=">u2"),
        "zero_d": np.array(3.5),
        "empty": np.zeros((0, 4), dtype=np.int16),
        "bigint": -(2**100),
        "surrogate": "a\udcffb",
        "unicode key \u2603": b"\x00\xff",
        "": "empty key",
        "a/b": 1, ".": 2, "..": 3, "%2F": 4, "x\x00y": 5,
        0: "int key", "0": "str key",
    }
    ckpt.save(tmp_path / "s.h5", tree)
    back = ckpt.load(tmp_path / "s.h5")
    assert_tree_equal(tree, back)
    assert struct.pack("<d", back["nan"]) == struct.pack("<d", tree["nan"])
    assert back["noncontig"].tobytes() == tree["noncontig"].tobytes()
    assert back["big_endian"].dtype == np.dtype(">u2")


class Counter:
    def __init__(self):
        self.n = 3

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_stateful_objects_are_stored_as_their_state_dict(tmp_path):
    ckpt.save(tmp_path / "s.h5", {"c": Counter()})
    assert ckpt.load(tmp_path / "s.h5") == {"c": {"n": 3}}


@pytest.mark.parametrize("bad, type_name", [
    (np.array([1, "a"], dtype=object), "dtype object"),
    (object(), "object"),
    (lambda: 0, "function"),
    (np.zeros(2, dtype=[("a", "<f4")]), "dtype"),
    (collections.namedtuple("P", "x y")(1, 2), "P"),
    (np.ma.masked_array([1, 2]), "MaskedArray"),
    ({1.5: 2}, "float"),
    (collections.deque([1]), "deque"),
])
def test_unsupported_values_are_refused_with_key_path_and_nothing_written(tmp_path, bad,
                                                                          type_name):
    path = tmp_path / "x.h5"
    with pytest.raises(ckpt.UnsupportedTypeError) as info:
        ckpt.save(path, {"outer": [0, {"inner": bad}]})
    message = str(info.value)
    assert "outer/1/inner" in message and type_name in message
    assert isinstance(info.value, TypeError)
    assert os.listdir(tmp_path) == []


def test_cycles_are_refused():
    tree: dict = {"a": []}
    tree["a"].append(tree)
    with pytest.raises(ckpt.UnsupportedTypeError, match="cycle"):
        flatten(tree)


def test_keystr_quotes_what_would_be_ambiguous():
    assert keystr(["opt", "state", 0, "exp_avg"]) == "opt/state/0/exp_avg"
    assert keystr(["a/b", "0", ""]) == "'a/b'/'0'/''"
    assert keystr([]) == "<root>"


def test_keys_selects_only_what_it_names(tmp_path):
    tree = {"a": {}, "b": [], "c": {"x": [1, {}], "y": 2}, "d": [10, 20, 30]}
    ckpt.save(tmp_path / "k.h5", tree)
    assert ckpt.load(tmp_path / "k.h5", keys="a") == {"a": {}}
    assert ckpt.load(tmp_path / "k.h5", keys=[("c", "x"), "b"]) == {"b": [], "c": {"x": [1, {}]}}
    assert ckpt.load(tmp_path / "k.h5", keys=[("d", 1)]) == {"d": [20]}
    assert ckpt.load(tmp_path / "k.h5", keys=("c", "y")) == {"c": {"y": 2}}
    with pytest.raises(ckpt.StateMismatchError, match="nope"):
        ckpt.load(tmp_path / "k.h5", keys=("c", "nope"))


def test_too_deep_trees_are_refused_at_save(tmp_path):
    tree: list = []
    node = tree
    for _ in range(300):
        node.append([])
        node = node[0]
    with pytest.raises(ckpt.UnsupportedTypeError, match="nested deeper than 256"):
        ckpt.save(tmp_path / "deep.h5", tree)
    assert os.listdir(tmp_path) == []
