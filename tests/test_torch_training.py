"""Real PyTorch training code, unmodified: every torch.optim optimizer and LR scheduler,
third-party optimizers that add keys while stepping, GradScaler, compiled and wrapped
models, tied weights, in-place restore and reproducible augmentation in workers.

Each resume test trains k steps, saves, restores into a *fresh* template, trains on,
and compares every bit with an uninterrupted run.
"""

from __future__ import annotations

import collections
import math
import os
import tracemalloc
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.optim import lr_scheduler as lrs  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import ckpt  # noqa: E402
from ckpt.integrations.torch import ResumableSampler, SeededDataset  # noqa: E402
from tests.conftest import assert_tree_equal, loader_context  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.Tanh(), torch.nn.Linear(8, 3))


def batch_of(step):
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def loss_of(model, step):
    inputs, targets = batch_of(step)
    return torch.nn.functional.cross_entropy(model(inputs), targets)


def train(state, steps, start=0):
    model, optimizer = state["model"], state["optimizer"]
    for step in range(start, start + steps):
        def closure(step=step):
            optimizer.zero_grad()
            loss = loss_of(model, step)
            loss.backward()
            return loss
        loss = optimizer.step(closure)
        scheduler = state.get("scheduler")
        if isinstance(scheduler, lrs.ReduceLROnPlateau):
            scheduler.step(float(loss))
        elif scheduler is not None:
            scheduler.step()


def full_state(state):
    return {key: value.state_dict() for key, value in state.items()}


def check_resume_is_exact(tmp_path, make_state, k=4, more=4):
    """Uninterrupted run of k + more steps against k, save, restore into fresh, more."""
    uninterrupted = make_state(0)
    train(uninterrupted, k + more)
    original = make_state(0)
    train(original, k)
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(k, original)
        fresh = make_state(1)
        restored = manager.restore(into=fresh)
    assert restored is fresh
    assert_tree_equal(full_state(original), full_state(fresh))
    train(fresh, more, start=k)
    assert_tree_equal(full_state(uninterrupted), full_state(fresh))


# ------------------------------------------------------------ optimizers

TORCH_OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=1e-2),
    "Adadelta": lambda p: torch.optim.Adadelta(p),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
    "ASGD": lambda p: torch.optim.ASGD(p, lr=1e-2, t0=2),
    "LBFGS": lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=3, history_size=4),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=1e-2),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=1e-2),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
    "Rprop": lambda p: torch.optim.Rprop(p, lr=1e-2),
    "Adafactor": lambda p: torch.optim.Adafactor(p, lr=1e-2),
}


def _third_party():
    import dadaptation
    import lion_pytorch
    import prodigyopt
    import pytorch_optimizer
    import schedulefree

    def schedule_free(params):
        optimizer = schedulefree.AdamWScheduleFree(params, lr=1e-2, warmup_steps=2)
        optimizer.train()
        return optimizer

    # Prodigy, Lamb and Adan add keys to param_groups inside step(): a fresh
    # optimizer's template lacks them
    return {
        "prodigyopt.Prodigy": lambda p: prodigyopt.Prodigy(p, lr=1.0),
        "pytorch_optimizer.Lamb": lambda p: pytorch_optimizer.Lamb(p, lr=1e-2),
        "pytorch_optimizer.Adan": lambda p: pytorch_optimizer.Adan(p, lr=1e-2),
        "schedulefree.AdamWScheduleFree": schedule_free,
        "dadaptation.DAdaptAdam": lambda p: dadaptation.DAdaptAdam(p, lr=1.0),
        "lion_pytorch.Lion": lambda p: lion_pytorch.Lion(p, lr=1e-3),
    }


THIRD_PARTY = _third_party()


def optimizer_state(factory):
    def make(seed):
        model = make_model(seed)
        return {"model": model, "optimizer": factory(model.parameters())}
    return make


@pytest.mark.parametrize("name", list(TORCH_OPTIMIZERS))
def test_every_torch_optimizer_resumes_bit_exactly(tmp_path, name):
    check_resume_is_exact(tmp_path, optimizer_state(TORCH_OPTIMIZERS[name]))


@pytest.mark.parametrize("name", list(THIRD_PARTY))
def test_third_party_optimizer_resumes_bit_exactly(tmp_path, name):
    check_resume_is_exact(tmp_path, optimizer_state(THIRD_PARTY[name]))


def test_keys_an_optimizer_adds_while_stepping_reach_its_load_state_dict(tmp_path):
    state = optimizer_state(THIRD_PARTY["pytorch_optimizer.Lamb"])(0)
    train(state, 2)
    assert "step" in state["optimizer"].param_groups[0]
    fresh = optimizer_state(THIRD_PARTY["pytorch_optimizer.Lamb"])(1)
    assert "step" not in fresh["optimizer"].param_groups[0]
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(2, state)
        manager.restore(into=fresh)
    assert fresh["optimizer"].param_groups[0]["step"] == 2


def test_optimizer_with_other_parameter_groups_is_refused_before_anything_is_touched(
        tmp_path):
    state = optimizer_state(TORCH_OPTIMIZERS["Adam"])(0)
    train(state, 2)
    model = make_model(1)
    before = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    two_groups = torch.optim.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=1e-2)
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(2, state)
        with pytest.raises(ckpt.StateMismatchError) as info:
            manager.restore(into={"model": model, "optimizer": two_groups})
    assert "optimizer: param_groups (expected 2 parameter groups, found 1)" in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_module_key_mismatches_are_still_reported(tmp_path):
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"model": make_model(0)})
        other = torch.nn.Sequential(torch.nn.Linear(6, 8))
        with pytest.raises(ckpt.StateMismatchError) as info:
            manager.restore(into={"model": other})
    message = str(info.value)
    assert "model/'1.weight': unexpected" in message and "model/'3.bias': unexpected" in message


def test_tensor_shape_in_an_optimizer_state_is_still_checked(tmp_path):
    state = optimizer_state(TORCH_OPTIMIZERS["Adam"])(0)
    train(state, 1)
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, state)
        stepped = optimizer_state(TORCH_OPTIMIZERS["Adam"])(1)
        train(stepped, 1)
        exp_avg = stepped["optimizer"].state_dict()["state"][0]["exp_avg"]
        exp_avg.data = torch.zeros(3, 3)  # the live state's buffer has another shape
        with pytest.raises(ckpt.StateMismatchError) as info:
            manager.restore(into={"optimizer": stepped["optimizer"]}, keys="optimizer")
    assert "optimizer/state/0/exp_avg: shape (expected (3, 3), found (8, 6))" in str(info.value)


# ------------------------------------------------------------ schedulers

SCHEDULERS = {
    "LambdaLR": lambda o: lrs.LambdaLR(o, lambda epoch: 0.9 ** epoch),
    "MultiplicativeLR": lambda o: lrs.MultiplicativeLR(o, lambda epoch: 0.95),
    "StepLR": lambda o: lrs.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: lrs.MultiStepLR(o, milestones=[2, 5, 5], gamma=0.5),
    "ConstantLR": lambda o: lrs.ConstantLR(o, factor=0.5, total_iters=3),
    "LinearLR": lambda o: lrs.LinearLR(o, start_factor=0.2, total_iters=5),
    "ExponentialLR": lambda o: lrs.ExponentialLR(o, gamma=0.9),
    "PolynomialLR": lambda o: lrs.PolynomialLR(o, total_iters=10, power=2.0),
    "CosineAnnealingLR": lambda o: lrs.CosineAnnealingLR(o, T_max=6),
    "CosineAnnealingWarmRestarts": lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=3),
    "CyclicLR": lambda o: lrs.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3),
    "OneCycleLR": lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=20),
    "ReduceLROnPlateau": lambda o: lrs.ReduceLROnPlateau(o, patience=1, factor=0.5),
    "SequentialLR": lambda o: lrs.SequentialLR(
        o, [lrs.LinearLR(o, start_factor=0.5, total_iters=3), lrs.ExponentialLR(o, 0.9)],
        milestones=[3]),
    "ChainedScheduler": lambda o: lrs.ChainedScheduler(
        [lrs.ConstantLR(o, factor=0.5, total_iters=3), lrs.ExponentialLR(o, gamma=0.9)]),
}


def test_every_scheduler_class_torch_has_is_covered():
    classes = {name for name, value in vars(lrs).items() if isinstance(value, type)
               and issubclass(value, (lrs.LRScheduler, lrs.ReduceLROnPlateau))
               and not name.startswith("_") and name != "LRScheduler"}
    assert classes <= set(SCHEDULERS), classes - set(SCHEDULERS)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_resumes_bit_exactly(tmp_path, name):
    def make(seed):
        model = make_model(seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return {"model": model, "optimizer": optimizer, "scheduler": SCHEDULERS[name](optimizer)}
    check_resume_is_exact(tmp_path, make)


def test_multistep_milestones_come_back_as_a_counter(tmp_path):
    optimizer = torch.optim.SGD(make_model().parameters(), lr=0.1)
    scheduler = SCHEDULERS["MultiStepLR"](optimizer)
    ckpt.save(tmp_path / "s.h5", {"scheduler": scheduler})
    milestones = ckpt.load(tmp_path / "s.h5")["scheduler"]["milestones"]
    assert type(milestones) is collections.Counter and milestones == {2: 1, 5: 2}


def test_grad_scaler_resumes_bit_exactly(tmp_path):
    def make(seed):
        model = make_model(seed)
        return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.05),
                "scaler": torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)}

    def scaled_train(state, steps, start=0):
        for step in range(start, start + steps):
            state["optimizer"].zero_grad()
            state["scaler"].scale(loss_of(state["model"], step)).backward()
            state["scaler"].step(state["optimizer"])
            state["scaler"].update()

    uninterrupted, original = make(0), make(0)
    scaled_train(uninterrupted, 8)
    scaled_train(original, 4)
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(4, original)
        fresh = manager.restore(into=make(1))
    scaled_train(fresh, 4, start=4)
    assert fresh["scaler"].get_scale() == uninterrupted["scaler"].get_scale() != 2.0**10
    assert_tree_equal(full_state(uninterrupted), full_state(fresh))


# ------------------------------------------------------- values and containers


def test_containers_and_torch_values_of_real_state_dicts_come_back_as_themselves(tmp_path):
    state = {
        "counter": collections.Counter({3: 2, 7: 1}),
        "by_name": collections.defaultdict(list, {"a": [1, 2]}),
        "tags": {"x", "y"}, "frozen": frozenset({1, 2}),
        "size": torch.Size([3, 4]), "dtype": torch.bfloat16, "device": torch.device("cpu"),
    }
    ckpt.save(tmp_path / "v.h5", state)
    back = ckpt.load(tmp_path / "v.h5")
    assert back == state
    assert [type(v) for v in back.values()] == [type(v) for v in state.values()]
    assert back["by_name"].default_factory is list
    back["by_name"]["new"].append(1)  # still a defaultdict(list)


def test_unstorable_values_name_the_key_path_and_what_to_do(tmp_path):
    with pytest.raises(ckpt.UnsupportedTypeError) as info:
        ckpt.save(tmp_path / "x.h5", {"sched": {"fn": lambda epoch: 1.0}})
    assert "sched/fn" in str(info.value) and "never stored" in str(info.value)
    with pytest.raises(ckpt.UnsupportedTypeError) as info:
        ckpt.save(tmp_path / "x.h5", {"d": collections.defaultdict(lambda: 0)})
    assert "default_factory" in str(info.value) and "dict(value)" in str(info.value)
    assert not os.path.exists(tmp_path / "x.h5")


# ---------------------------------------------------------------- wrappers


def test_compiled_model_restores_into_the_plain_model_and_back(tmp_path):
    compiled = torch.compile(make_model(0))
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"model": compiled})
        plain = make_model(1)
        manager.restore(into={"model": plain})
        assert_tree_equal(compiled._orig_mod.state_dict(), plain.state_dict())
        manager.save(2, {"model": make_model(2)})
        compiled_again = torch.compile(make_model(3))
        manager.restore(2, into={"model": compiled_again})
    assert_tree_equal(make_model(2).state_dict(), compiled_again._orig_mod.state_dict())
    stored = ckpt.CheckpointManager(tmp_path).restore(1)["model"]
    assert list(stored) == list(plain.state_dict())  # canonical names on disk


def test_nested_compiled_submodule_and_data_parallel_use_canonical_names(tmp_path):
    model = make_model(0)
    model[0] = torch.compile(model[0])
    wrapped = torch.nn.DataParallel(model)
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"model": wrapped})
        assert list(manager.restore(1)["model"]) == list(make_model().state_dict())
        plain = make_model(1)
        manager.restore(into={"model": plain})
    assert_tree_equal(make_model(0).state_dict(), plain.state_dict())


def test_state_dicts_saved_with_wrapper_prefixes_restore_into_the_model(tmp_path):
    source = make_model(0)
    prefixed = collections.OrderedDict(("module." + k, v) for k, v in source.state_dict().items())
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"model": prefixed})
        plain = make_model(1)
        manager.restore(into={"model": plain})
    assert_tree_equal(source.state_dict(), plain.state_dict())


def test_a_key_mismatch_a_prefix_explains_says_so(tmp_path):
    source = make_model(0)
    prefixed = {"model." + k: v for k, v in source.state_dict().items()}
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"model": prefixed})
        with pytest.raises(ckpt.StateMismatchError) as info:
            manager.restore(into={"model": make_model(1)})
    assert "differs by the prefix 'model.'" in str(info.value)
    assert info.value.hint


# ------------------------------------------------------------- tied weights


class TiedLM(torch.nn.Module):
    def __init__(self, vocab=2000, width=64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.block = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # GPT-2's tie


def test_tied_weights_are_stored_once_and_come_back_shared(tmp_path):
    model = TiedLM()
    ckpt.save(tmp_path / "tied.h5", {"model": model})
    torch.save({"model": model.state_dict()}, tmp_path / "tied.pt")
    size, torch_size = (os.path.getsize(tmp_path / n) for n in ("tied.h5", "tied.pt"))
    assert size <= 1.02 * torch_size, (size, torch_size)
    back = ckpt.load(tmp_path / "tied.h5")["model"]
    embed, head = back["embed.weight"], back["head.weight"]
    assert embed.untyped_storage().data_ptr() == head.untyped_storage().data_ptr()
    assert torch.equal(embed, model.embed.weight.detach())
    fresh = TiedLM()
    ckpt.CheckpointManager(tmp_path / "m").save(1, {"model": model})
    ckpt.CheckpointManager(tmp_path / "m").restore(into={"model": fresh})
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_views_of_one_buffer_are_stored_once_and_share_storage_after_restore(tmp_path):
    flat = torch.arange(4096, dtype=torch.float32) * 0.5
    tree = {"flat": flat, "first": flat[:2048].view(32, 64), "cols": flat.view(64, 64)[:, 3],
            "t": flat.view(64, 64).t()}
    ckpt.save(tmp_path / "views.h5", tree)
    assert os.path.getsize(tmp_path / "views.h5") < 4096 * 4 + 12 * 1024
    back = ckpt.load(tmp_path / "views.h5")
    for key in tree:
        assert torch.equal(back[key], tree[key]) and back[key].stride() == tree[key].stride()
        assert back[key].untyped_storage().data_ptr() == back["flat"].untyped_storage().data_ptr()
    back["flat"][3] = -1.0
    assert back["cols"][0] == -1.0


def test_tied_weights_survive_async_save_and_show_and_verify(tmp_path):
    with ckpt.CheckpointManager(tmp_path, async_save=True) as manager:
        manager.save(1, {"model": TiedLM()})
    from ckpt import inspection

    assert [r.ok for r in inspection.verify(tmp_path)] == [True]
    back = ckpt.CheckpointManager(tmp_path).restore(keys=[("model", "head.weight")])
    assert back["model"]["head.weight"].shape == (2000, 64)


# ------------------------------------------------------- restore in place


def test_restore_into_updates_the_template_containers_in_place(tmp_path):
    model = make_model(0)
    state = {"step": 7, "model": model, "history": [1.0, 2.0], "cfg": {"lr": 0.1},
             "arrays": (np.arange(3.0),)}
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(7, state)
        template = {"step": 0, "model": make_model(1), "history": [0.0, 0.0],
                    "cfg": {"lr": 0.0}, "arrays": (np.zeros(3),)}
        history, cfg = template["history"], template["cfg"]
        result = manager.restore(into=template)
    assert result is template and template["step"] == 7
    assert template["history"] is history and history == [1.0, 2.0]
    assert template["cfg"] is cfg and cfg == {"lr": 0.1}
    assert np.array_equal(template["arrays"][0], np.arange(3.0))


def test_restore_into_reads_large_leaves_straight_into_template_memory(tmp_path):
    big = np.random.default_rng(0).standard_normal(4 * 1024 * 1024).astype(np.float32)  # 16 MiB
    tensor = torch.randn(2048, 2048)  # 16 MiB
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"a": big, "t": tensor})
        template = {"a": np.zeros_like(big), "t": torch.zeros(2048, 2048)}
        address = template["t"].data_ptr()
        tracemalloc.start()
        manager.restore(into=template)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert np.array_equal(template["a"], big) and torch.equal(template["t"], tensor)
    assert template["t"].data_ptr() == address
    assert peak < 2 * 1024 * 1024, f"restore allocated {peak} bytes for 32 MiB of leaves"


def test_a_mismatch_is_found_before_any_byte_is_read(tmp_path):
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"a": np.ones(100_000), "b": np.ones(5), "c": torch.ones(4, 4)})
        template = {"a": np.zeros(100_000), "b": np.zeros(6, dtype=np.float32),
                    "c": torch.zeros(4, 5, dtype=torch.float64)}
        with pytest.raises(ckpt.StateMismatchError) as info:
            manager.restore(into=template)
    message = str(info.value)
    assert "b: shape (expected (6,), found (5,))" in message
    assert "b: dtype (expected float32, found float64)" in message
    assert "c: shape (expected (4, 5), found (4, 4))" in message
    assert "c: dtype (expected torch.float64, found torch.float32)" in message
    assert not template["a"].any()  # the matching leaf was not read either


def test_checksum_failure_half_way_then_restore_falls_back_and_overwrites(tmp_path):
    with ckpt.CheckpointManager(tmp_path) as manager:
        manager.save(1, {"a": np.full(100_000, 1.0), "b": np.full(100_000, 1.0)})
        manager.save(2, {"a": np.full(100_000, 2.0), "b": np.full(100_000, 2.0)})
    data = tmp_path / "step_2" / "state.h5"
    with open(data, "r+b") as handle:  # damage the last bytes of leaf "b"
        handle.seek(-9000, os.SEEK_END)
        handle.write(b"\xff" * 8)
    template = {"a": np.zeros(100_000), "b": np.zeros(100_000)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt.CheckpointManager(tmp_path).restore(into=template)
    assert any("skipping step 2" in str(w.message) for w in caught)
    assert (template["a"] == 1.0).all() and (template["b"] == 1.0).all()


# ------------------------------------------------------- worker randomness


class Noisy:
    """Augmentation drawn only from the per-sample generator."""

    def __call__(self, sample, generator):
        value, label = sample
        flip = torch.rand((), generator=generator) < 0.5
        return (value.flip(-1) if flip else value) + torch.randn(value.shape,
                                                                 generator=generator), label


def test_augmentation_in_dataloader_workers_resumes_exactly(tmp_path):
    base = TensorDataset(torch.arange(60.0).reshape(30, 2), torch.arange(30))

    def loader_for(order):
        sampler = ResumableSampler(order, with_epoch=True)
        loader = DataLoader(SeededDataset(base, Noisy(), seed=5), batch_size=4, sampler=sampler,
                            num_workers=2, generator=torch.Generator(), drop_last=True,
                            multiprocessing_context=loader_context())
        return sampler, loader

    sampler, loader = loader_for(ckpt.DataOrder(30, batch_size=4, seed=1, drop_last=True))
    batches = sampler.batches(loader)
    uninterrupted = [next(batches) for _ in range(12)]  # crosses an epoch boundary

    sampler, loader = loader_for(ckpt.DataOrder(30, batch_size=4, seed=1, drop_last=True))
    batches = sampler.batches(loader)
    first = [next(batches) for _ in range(5)]
    ckpt.save(tmp_path / "s.h5", {"sampler": sampler})
    sampler, loader = loader_for(ckpt.DataOrder(30, batch_size=4, seed=99, drop_last=True))
    sampler.load_state_dict(ckpt.load(tmp_path / "s.h5")["sampler"])
    batches = sampler.batches(loader)
    resumed = first + [next(batches) for _ in range(7)]
    for (x, y), (rx, ry) in zip(uninterrupted, resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert not math.isclose(float(uninterrupted[0][0][0, 0]), float(base[
        int(uninterrupted[0][1][0])][0][0]))  # augmentation did change the sample


def test_seeded_dataset_explains_how_it_is_indexed():
    with pytest.raises(TypeError, match="with_epoch=True"):
        SeededDataset([1, 2], lambda s, g: s)[0]
