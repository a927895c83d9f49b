"""PyTorch integration: tensors bit for bit, optimizer/scheduler/scaler state, refusals,
restore into modules, devices, and mid-epoch DataLoader resume."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import ckpt  # noqa: E402
from ckpt.integrations import torch as adapter  # noqa: E402
from ckpt.integrations.torch import ResumableSampler  # noqa: E402
from tests.conftest import assert_tree_equal, loader_context, run_python  # noqa: E402

pytestmark = [pytest.mark.torch,
              pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")]

UINT = {1: torch.uint8, 2: torch.uint16, 4: torch.uint32, 8: torch.uint64}
REQUIRED_DTYPES = [
    "float32", "float64", "float16", "bfloat16", "bool", "uint8", "uint16", "uint32", "uint64",
    "int8", "int16", "int32", "int64", "complex64", "complex128", "complex32",
]
FLOAT8 = ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"]
ALL_DTYPES = sorted(adapter._DTYPES_BY_NAME)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def assert_same_tensor(expected, actual, key="tensor"):
    assert isinstance(actual, torch.Tensor), f"{key}: {type(actual)}"
    assert_tree_equal(expected, actual, key)


def random_tensor(dtype, shape, seed=0):
    """A tensor of ``dtype`` holding random bits (valid 0/1 for bool)."""
    width = dtype.itemsize
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    raw = rng.integers(0, 256, size=count * width, dtype=np.uint8)
    if dtype == torch.bool:
        raw %= 2
    return torch.from_numpy(raw).view(dtype).reshape(shape)


# ---------------------------------------------------------------- import


def test_import_ckpt_does_not_import_torch():
    code = (
        "import sys, tempfile, numpy as np, ckpt\n"
        "d = tempfile.mkdtemp()\n"
        "ckpt.save(d + '/a.h5', {'x': np.ones(3), 'rng': ckpt.RNGState()})\n"
        "ckpt.load(d + '/a.h5')\n"
        "with ckpt.CheckpointManager(d + '/m') as m:\n"
        "    m.save(1, {'order': ckpt.DataOrder(10), 'x': np.ones(2)}); m.restore()\n"
        "print('torch' in sys.modules)\n"
    )
    assert run_python(code).stdout.strip() == "False"


# ---------------------------------------------------------------- dtypes


def test_every_required_dtype_is_supported():
    missing = [name for name in REQUIRED_DTYPES if name not in ALL_DTYPES]
    missing += [name for name in FLOAT8 if hasattr(torch, name) and name not in ALL_DTYPES]
    assert not missing


@pytest.mark.parametrize("shape", [(3, 5), (300, 300)], ids=["packed", "dataset"])
@pytest.mark.parametrize("name", ALL_DTYPES)
def test_dtype_round_trips_bitwise_through_save_and_load(tmp_path, name, shape):
    tensor = random_tensor(getattr(torch, name), shape, seed=len(name))
    ckpt.save(tmp_path / "t.h5", {"t": tensor})
    assert_same_tensor(tensor, ckpt.load(tmp_path / "t.h5")["t"], name)


def test_every_dtype_round_trips_through_the_manager(tmp_path):
    state = {name: {"big": random_tensor(getattr(torch, name), (130, 140), seed=i),
                    "scalar": random_tensor(getattr(torch, name), (), seed=i + 1),
                    "empty": random_tensor(getattr(torch, name), (0, 4))}
             for i, name in enumerate(ALL_DTYPES)}
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, state)
        restored = manager.restore(1)
    for name, leaves in state.items():
        for key, tensor in leaves.items():
            assert_same_tensor(tensor, restored[name][key], f"{name}/{key}")


def test_reinterpreted_dtype_is_stored_as_uint_with_its_name(tmp_path):
    kind, array, extra = adapter.encode_tensor(torch.ones(4, dtype=torch.bfloat16), "k")
    assert (kind, array.dtype, extra) == ("torch", np.dtype(np.uint16), {"dtype": "bfloat16"})
    ckpt.save(tmp_path / "t.h5", {"w": torch.ones(4, dtype=torch.bfloat16)})
    import h5py

    with h5py.File(tmp_path / "t.h5") as file:  # a plain HDF5 tool sees uint16 bits
        assert file[".ckpt/pack0"].dtype == np.uint8


def test_async_save_stages_tensors_before_returning(tmp_path):
    weights = torch.arange(100_000, dtype=torch.float32)
    expected = weights.clone()
    with ckpt.CheckpointManager(tmp_path, async_save=True) as manager:
        manager.save(1, {"w": weights, "bf": weights.to(torch.bfloat16)})
        weights.add_(1)  # the training loop goes on while the save is written
        manager.wait_until_finished()
        restored = manager.restore(1)
    assert_same_tensor(expected, restored["w"])
    assert_same_tensor(expected.to(torch.bfloat16), restored["bf"])


def test_contiguous_cpu_tensor_is_encoded_without_a_copy():
    tensor = torch.arange(12, dtype=torch.float32)
    _, array, _ = adapter.encode_tensor(tensor, "k")
    assert array.__array_interface__["data"][0] == tensor.data_ptr()


# ------------------------------------------------------------- shapes, views


def views():
    base = torch.arange(60, dtype=torch.float64).reshape(3, 4, 5)
    generator = torch.Generator().manual_seed(1)
    complex_base = torch.randn(4, 3, dtype=torch.complex64, generator=generator)
    return {
        "zero_d": torch.tensor(2.5),
        "zero_d_bf16": torch.tensor(-1.25, dtype=torch.bfloat16),
        "empty": torch.empty(0),
        "empty_3d": torch.empty(3, 0, 2, dtype=torch.int16),
        "transposed": base.transpose(0, 2),
        "strided_slice": base[:, ::2, 1:4],
        "offset_row": base[2],
        "expanded": torch.arange(3).expand(4, 3),
        "bf16_transposed": base.to(torch.bfloat16).permute(2, 0, 1),
        "conj_view": complex_base.conj(),
        "neg_view": complex_base.conj().imag,
        "f8_slice": random_tensor(torch.float8_e4m3fn, (6, 6))[::2, 1:],
        "uint4_transposed": random_tensor(torch.uint4, (3, 4)).t(),
    }


@pytest.mark.parametrize("name", list(views()))
def test_zero_d_empty_and_non_contiguous_tensors_round_trip(tmp_path, name):
    tensor = views()[name]
    ckpt.save(tmp_path / "v.h5", {"v": tensor})
    restored = ckpt.load(tmp_path / "v.h5")["v"]
    expected = tensor.resolve_conj().resolve_neg()
    assert_same_tensor(expected, restored, name)
    assert restored.is_contiguous() and not restored.is_conj() and not restored.is_neg()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(ALL_DTYPES),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
       seed=st.integers(0, 2**16), transpose=st.booleans(), step=st.integers(1, 3))
def test_encode_decode_property(name, shape, seed, transpose, step):
    tensor = random_tensor(getattr(torch, name), tuple(shape), seed)
    if tensor.dim() >= 2 and transpose:
        tensor = tensor.transpose(0, -1)
    if tensor.dim() >= 1:
        tensor = tensor[::step]
    kind, array, extra = adapter.encode_tensor(tensor, "k")
    assert array.flags.c_contiguous and array.dtype.kind in "biufc"
    assert_same_tensor(tensor, adapter.decode_tensor(array.copy(), extra), name)


def test_requires_grad_is_detached_and_recorded(tmp_path):
    leaf = torch.randn(3, requires_grad=True)
    derived = leaf * 2  # a non-leaf with a grad_fn
    param = torch.nn.Parameter(torch.randn(2, 2))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    ckpt.save(tmp_path / "g.h5", {"leaf": leaf, "derived": derived, "p": param, "f": frozen})
    back = ckpt.load(tmp_path / "g.h5")
    assert back["leaf"].requires_grad and back["leaf"].grad_fn is None
    assert back["derived"].requires_grad and back["derived"].is_leaf
    assert type(back["p"]) is torch.nn.Parameter and back["p"].requires_grad
    assert type(back["f"]) is torch.nn.Parameter and not back["f"].requires_grad
    for key, tensor in [("leaf", leaf), ("derived", derived), ("p", param), ("f", frozen)]:
        assert_same_tensor(tensor, back[key], key)


def test_mixed_tree_with_numpy_and_python_leaves(tmp_path):
    tree = {"t": torch.arange(3), "a": np.arange(3), "n": 3, "s": "x",
            "nested": [torch.zeros(2, dtype=torch.bool), (torch.tensor(1),)]}
    ckpt.save(tmp_path / "m.h5", tree)
    back = ckpt.load(tmp_path / "m.h5")
    assert type(back["a"]) is np.ndarray and type(back["t"]) is torch.Tensor
    assert type(back["nested"][1]) is tuple
    assert_same_tensor(tree["nested"][1][0], back["nested"][1][0])


# ------------------------------------------------------ optimizers and co.


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 3))


OPTIMIZERS = {
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, amsgrad=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
}
SCHEDULERS = {
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05,
                                                                 total_steps=20),
}


def train_step(model, optimizer, scheduler, batch, scaler=None):
    inputs, targets = batch
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    scheduler.step()


def batch_of(step):
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def fresh_training_state(opt_name, sched_name, seed):
    model = make_model(seed)
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    return {"model": model, "optimizer": optimizer,
            "scheduler": SCHEDULERS[sched_name](optimizer)}


def full_state(state):
    return {key: value.state_dict() for key, value in state.items()}


@pytest.mark.parametrize("sched_name", list(SCHEDULERS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_optimizer_and_scheduler_restore_gives_identical_next_step(tmp_path, opt_name,
                                                                   sched_name):
    original = fresh_training_state(opt_name, sched_name, seed=0)
    for step in range(3):
        train_step(*original.values(), batch_of(step))
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(3, original)
        fresh = fresh_training_state(opt_name, sched_name, seed=1)
        assert fresh["optimizer"].state_dict()["state"] == {}
        restored = manager.restore(into=fresh)
    assert restored["model"] is fresh["model"]
    assert_tree_equal(full_state(original), full_state(fresh))
    for state in (original, fresh):
        train_step(*state.values(), batch_of(3))
    assert_tree_equal(full_state(original), full_state(fresh))


def test_optimizer_state_keeps_int_keys_and_param_groups(tmp_path):
    state = fresh_training_state("adamw", "step", seed=0)
    train_step(*state.values(), batch_of(0))
    ckpt.save(tmp_path / "o.h5", {"optimizer": state["optimizer"]})
    loaded = ckpt.load(tmp_path / "o.h5")["optimizer"]
    assert list(loaded["state"]) == [0, 1, 2, 3, 4, 5]
    assert loaded["param_groups"][0]["betas"] == (0.9, 0.999)
    assert_tree_equal(state["optimizer"].state_dict(), loaded)


def test_grad_scaler_state_round_trips(tmp_path):
    def make(seed):
        state = fresh_training_state("sgd_momentum", "step", seed)
        state["scaler"] = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        return state

    def step(state, number):
        train_step(state["model"], state["optimizer"], state["scheduler"], batch_of(number),
                   scaler=state["scaler"])

    original = make(0)
    for number in range(5):
        step(original, number)
    assert original["scaler"].get_scale() != 2.0**10  # it did grow
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(5, original)
        fresh = manager.restore(into=make(1))
    assert original["scaler"].state_dict() == fresh["scaler"].state_dict()
    step(original, 5)
    step(fresh, 5)
    assert_tree_equal(full_state(original), full_state(fresh))


def test_restore_into_module_of_other_shape_names_parameter_and_shapes(tmp_path):
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"model": torch.nn.Linear(4, 10)})
        template = torch.nn.Linear(5, 10)
        before = template.weight.detach().clone()
        with pytest.raises(ckpt.StateMismatchError) as info:
            manager.restore(into={"model": template})
    message = str(info.value)
    assert "model/weight: shape (expected (10, 5), found (10, 4))" in message
    assert [m.key for m in info.value.mismatches] == ["model/weight"]
    assert torch.equal(template.weight, before)  # nothing was touched


def test_restore_into_module_of_other_dtype_names_both_dtypes(tmp_path):
    ckpt_dir = tmp_path / "c"
    with ckpt.CheckpointManager(ckpt_dir) as manager:
        manager.save(1, {"model": torch.nn.Linear(2, 2)})
        with pytest.raises(ckpt.StateMismatchError, match=r"model/bias: dtype \(expected "
                           r"torch.float64, found torch.float32\)"):
            manager.restore(into={"model": torch.nn.Linear(2, 2).double()})


def test_restore_tensor_template_in_place_and_type_mismatch(tmp_path):
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)})
        target = torch.zeros(3, 2).t()  # a non-contiguous template is filled in place
        result = manager.restore(into={"w": target, "n": torch.tensor(0)})
        assert result["w"] is target and torch.equal(target, torch.arange(6.0).reshape(2, 3))
        with pytest.raises(ckpt.StateMismatchError, match="w: type"):
            manager.restore(into={"w": np.zeros((2, 3), np.float32), "n": torch.tensor(0)})
        # a tensor of another shape AND dtype: both differences are reported
        with pytest.raises(ckpt.StateMismatchError) as info:
            manager.restore(into={"w": torch.zeros(3, 3, dtype=torch.float64),
                                  "n": torch.tensor(0)})
        assert [(m.key, m.kind) for m in info.value.mismatches] == [("w", "shape"),
                                                                   ("w", "dtype")]
        assert "w: shape (expected (3, 3), found (2, 3))" in str(info.value)
        assert "w: dtype (expected torch.float64, found torch.float32)" in str(info.value)


def test_copy_into_is_bitwise_for_reinterpreted_dtypes():
    for name in ["bfloat16", "float8_e5m2", "complex32", "uint4"]:
        dtype = getattr(torch, name)
        source = random_tensor(dtype, (4, 4), seed=3)
        template = torch.zeros(4, 4 * dtype.itemsize, dtype=torch.uint8).view(dtype)
        assert adapter.mismatches(template, source) == []
        assert adapter.copy_into(template, source) is template
        assert_same_tensor(source, template, name)


def test_copy_into_parameter_with_grad_and_meta_template():
    param = torch.nn.Parameter(torch.zeros(3))
    adapter.copy_into(param, torch.ones(3))  # no "leaf requires grad" error
    assert torch.equal(param.detach(), torch.ones(3)) and param.requires_grad
    meta = torch.empty(3, device="meta")
    [(kind, expected, found)] = adapter.mismatches(meta, torch.ones(3))
    assert kind == "device" and "to_empty" in expected


# ----------------------------------------------------------------- refusals


class _MyTensor(torch.Tensor):
    pass


# how to build each refused tensor, and a word its error message must contain
REFUSED = {
    "sparse_coo": (lambda: torch.eye(3).to_sparse(), "sparse"),
    "sparse_csr": (lambda: torch.eye(3).to_sparse_csr(), "sparse"),
    "sparse_csc": (lambda: torch.eye(3).to_sparse_csc(), "sparse"),
    "quantized": (lambda: torch.quantize_per_tensor(torch.eye(3), 0.1, 0, torch.qint8),
                  "quantized"),
    "meta": (lambda: torch.empty(3, device="meta"), "meta"),
    "nested": (lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)],
                                                  layout=torch.jagged), "nested"),
    "subclass": (lambda: torch.eye(3).as_subclass(_MyTensor), "_MyTensor"),
    "lazy": (lambda: torch.nn.LazyLinear(3).weight, "UninitializedParameter"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: sparse beta, quantized deprecated
@pytest.mark.parametrize("name", list(REFUSED))
def test_unrepresentable_tensors_are_refused_with_key_path_and_nothing_written(tmp_path, name):
    build, hint = REFUSED[name]
    value = build()
    tree = {"model": {"layers": [torch.ones(1), {"a/b": value}]}}
    with pytest.raises(ckpt.UnsupportedTypeError) as info:
        ckpt.save(tmp_path / "x.h5", tree)
    assert info.value.key == "model/layers/1/'a/b'"
    assert "model/layers/1/'a/b'" in str(info.value) and hint in str(info.value)
    assert isinstance(info.value, TypeError)
    manager = ckpt.CheckpointManager(tmp_path / "m")
    with pytest.raises(ckpt.UnsupportedTypeError, match="model/layers/1"):
        manager.save(1, tree)
    assert os.listdir(tmp_path) == []  # refused before anything, even the directory, exists


def test_decode_refuses_unknown_dtype_and_wrong_storage():
    with pytest.raises(ValueError, match="unknown torch dtype 'float3'"):
        adapter.decode_tensor(np.zeros(2, np.uint8), {"dtype": "float3"})
    with pytest.raises(ValueError, match="stored as int8, expected uint16"):
        adapter.decode_tensor(np.zeros(2, np.int8), {"dtype": "bfloat16"})


# ------------------------------------------------------------------ devices


def test_device_option_places_restored_tensors(tmp_path):
    state = {"w": torch.randn(3, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    ckpt.save(tmp_path / "d.h5", state)
    for device in ["cpu", torch.device("cpu"), None]:
        back = ckpt.load(tmp_path / "d.h5", device=device)
        assert back["w"].device.type == "cpu"
        assert_same_tensor(state["b"], back["b"])
    with ckpt.CheckpointManager(tmp_path / "m") as manager:
        manager.save(1, state)
        assert manager.restore(device="cpu")["w"].device.type == "cpu"


@CUDA
def test_cuda_tensors_save_to_cpu_and_map_back(tmp_path):
    state = {"w": torch.randn(4, 4, device="cuda"), "h": torch.ones(3, device="cuda",
                                                                    dtype=torch.bfloat16)}
    ckpt.save(tmp_path / "c.h5", state)
    assert ckpt.load(tmp_path / "c.h5")["w"].device.type == "cpu"
    back = ckpt.load(tmp_path / "c.h5", device="cuda")
    assert back["w"].is_cuda
    assert_same_tensor(state["h"], back["h"])


@CUDA
def test_restore_into_cuda_template_copies_across_devices(tmp_path):
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"model": torch.nn.Linear(3, 3)})
        model = torch.nn.Linear(3, 3).cuda()
        manager.restore(into={"model": model})
    assert model.weight.is_cuda


# ------------------------------------------------------------------ sampler


def make_loader(num_workers, seed=7, size=23, batch_size=4, drop_last=False):
    dataset = TensorDataset(torch.arange(size))
    order = ckpt.DataOrder(size, batch_size=batch_size, seed=seed, drop_last=drop_last)
    sampler = ResumableSampler(order)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                        drop_last=drop_last, num_workers=num_workers,
                        generator=torch.Generator(), prefetch_factor=3 if num_workers else None,
                        multiprocessing_context=loader_context() if num_workers else None)
    return sampler, loader


def take(stream, count):
    """``count`` batches, each followed by a draw from torch's global RNG (dropout)."""
    out = []
    for _ in range(count):
        (indices,) = next(stream)
        out.append((indices.tolist(), torch.rand(1).item()))
    return out


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_resumes_mid_epoch_exactly(tmp_path, num_workers, drop_last):
    torch.manual_seed(0)
    sampler, loader = make_loader(num_workers, drop_last=drop_last)
    expected = take(sampler.batches(loader), 16)  # crosses 2 epoch boundaries
    for cut in (3, 6, 11):  # mid-epoch, exactly at an epoch end, later epoch
        torch.manual_seed(0)
        sampler, loader = make_loader(num_workers, drop_last=drop_last)
        first = take(sampler.batches(loader), cut)  # workers have prefetched further
        ckpt.save(tmp_path / "s.h5", {"sampler": sampler, "rng": ckpt.RNGState()})
        torch.manual_seed(12345)  # a new process: its own RNG state, a fresh sampler
        sampler, loader = make_loader(num_workers, seed=99, drop_last=drop_last)
        state = ckpt.load(tmp_path / "s.h5")
        sampler.load_state_dict(state["sampler"])
        ckpt.RNGState().load_state_dict(state["rng"])
        assert first + take(sampler.batches(loader), 16 - cut) == expected, cut


def test_sampler_epochs_cover_the_data_and_count_consumed_batches():
    sampler, loader = make_loader(0, size=10, batch_size=4)
    assert len(sampler) == 10
    stream = sampler.batches(loader)
    seen = [next(stream)[0].tolist() for _ in range(3)]
    assert sorted(sum(seen, [])) == list(range(10)) and len(seen[-1]) == 2
    assert sampler.state_dict() == {"seed": 7, "epoch": 0, "position": 10}
    next(stream)
    assert sampler.state_dict() == {"seed": 7, "epoch": 1, "position": 4}
    assert len(sampler) == 6


def test_sampler_refuses_mismatched_loaders():
    sampler, _ = make_loader(0)
    dataset = TensorDataset(torch.arange(23))
    wrong_size = DataLoader(dataset, batch_size=5, sampler=sampler, generator=torch.Generator())
    with pytest.raises(ValueError, match="must match its DataOrder"):
        next(sampler.batches(wrong_size))
    no_generator = DataLoader(dataset, batch_size=4, sampler=sampler)
    with pytest.raises(ValueError, match="generator=torch.Generator"):
        next(sampler.batches(no_generator))
    other = DataLoader(dataset, batch_size=4, generator=torch.Generator())
    with pytest.raises(ValueError, match="must use this sampler"):
        next(sampler.batches(other))


def test_torch_generator_used_for_shuffling_is_restored_by_rng_state(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.randperm(10, generator=generator)
    ckpt.save(tmp_path / "g.h5", {"rng": ckpt.RNGState(generator)})
    expected = torch.randperm(10, generator=generator)
    other = torch.Generator().manual_seed(6)
    ckpt.RNGState(other).load_state_dict(ckpt.load(tmp_path / "g.h5")["rng"])
    assert torch.equal(torch.randperm(10, generator=other), expected)

