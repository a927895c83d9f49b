"""The ``ckpt`` command end to end: every subcommand in a real subprocess.

The checkpoints are written by a real ``CheckpointManager``; tests that change a
directory work on their own copy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import ckpt
from tests.step_files import leaf_entry

STEPS = (10, 20, 30, 40, 50)
VAL_LOSS = {10: 0.5, 20: 0.2, 30: 0.4, 40: 0.3, 50: 0.6}
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")
BASE = np.random.default_rng(0).standard_normal((128, 160)).astype(np.float32)  # 80 KiB


def make_state(step: int) -> dict:
    """A small training state; ``params/w`` is large enough for its own dataset."""
    state = {
        "params": {"w": BASE + np.float32(step / 1000), "b": np.arange(16, dtype=np.float32)},
        "opt": [np.int64(step), {"lr": 0.1 / step}],
        "name": "run-1",
        "step": step,
        "nothing": None,
    }
    if step == 10:
        state["warmup"] = True
    if step == 50:
        state["extra"] = np.ones(3)
    return state


def run_ckpt(*args: object) -> subprocess.CompletedProcess:
    """``python -m ckpt.cli ARGS`` with stdout and stderr captured as text."""
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "ckpt.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def assert_error(result: subprocess.CompletedProcess, *names: str, code: int = 2) -> None:
    """Exit ``code``, one ``ckpt: error:`` line naming ``names`` on stderr, no traceback."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("ckpt: error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli") / "run"
    with ckpt.CheckpointManager(directory) as manager:
        for number, step in enumerate(STEPS):
            manager.save(step, make_state(step), metrics={"val_loss": VAL_LOSS[step],
                                                          "epoch": number},
                         metadata={"epoch": number, "note": "cli test"})
    return directory


@pytest.fixture
def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


# ----------------------------------------------------------------- help


def test_help_lists_every_subcommand_and_version() -> None:
    helped = run_ckpt("--help")
    assert helped.returncode == 0
    for command in ("demo", "ls", "show", "verify", "prune", "diff", "export"):
        assert re.search(rf"^\s+{command}\s", helped.stdout, re.MULTILINE), command
    version = run_ckpt("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"ckpt {ckpt.__version__}"


# ------------------------------------------------------------------- ls


def test_ls_rows_total_and_kept_by(run_dir: Path) -> None:
    listed = run_ckpt("ls", run_dir)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["STEP", "SAVED", "SIZE", "METRICS", "KEPT", "BY"]
    rows = lines[1:-1]
    assert [int(row.split()[0]) for row in rows] == list(STEPS)
    for row, step in zip(rows, STEPS):
        assert ISO_TIME.search(row) and "KiB" in row and f"val_loss={VAL_LOSS[step]}" in row
        # no --keep-* option: the policy recorded by the saving manager (KeepAll)
        assert row.rstrip().endswith("all")
    assert re.fullmatch(r"5 checkpoints, \d+\.\d KiB", lines[-1])

    flags = ("--keep-last", 1, "--keep-every", 40, "--keep-best", "val_loss")
    text = run_ckpt("ls", run_dir, *flags).stdout.splitlines()
    assert [row.split()[-1] for row in text[1:-1]] == [
        "(prune)", "best", "(prune)", "every", "last"]

    parsed = json.loads(run_ckpt("ls", run_dir, "--keep-best", "val_loss", "--json").stdout)
    assert [row["step"] for row in parsed] == list(STEPS)
    assert [row["kept_by"] for row in parsed] == [[], ["best"], [], [], ["newest"]]
    first = parsed[0]
    assert first["valid"] and first["metrics"] == {"val_loss": 0.5, "epoch": 0}
    assert first["nbytes"] >= BASE.nbytes
    saved = datetime.datetime.fromisoformat(first["saved"])
    assert abs(saved.timestamp() - first["time"]) < 1


# ----------------------------------------------------------------- show


def test_show_latest_step_and_json(run_dir: Path) -> None:
    shown = run_ckpt("show", run_dir)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith("step 50 in ") and "val_loss=0.6" in out and '"cli test"' in out
    assert re.search(r"^params/w\s+ndarray\s+float32\s+\(128, 160\)\s+80\.0 KiB$", out, re.M)
    assert re.search(r"^opt/0\s+npscalar\s+int64\s+\(\)\s+8 B$", out, re.M)
    assert re.search(r"^name\s+str\s+-\s+-\s+5 B$", out, re.M)
    assert re.search(r"^extra\s+ndarray\s+float64\s+\(3,\)", out, re.M)

    described = json.loads(run_ckpt("show", run_dir, 20, "--json").stdout)
    assert described["step"] == 20 and described["format"] == "ckpt-step"
    assert described["metrics"] == {"val_loss": 0.2, "epoch": 1}
    assert described["metadata"] == {"epoch": 1, "note": "cli test"}
    leaves = {leaf["key"]: leaf for leaf in described["leaves"]}
    assert set(leaves) == {"params/w", "params/b", "opt/0", "opt/1/lr", "name", "step",
                           "nothing"}
    assert leaves["params/w"] == {"key": "params/w", "path": ["params", "w"],
                                  "kind": "ndarray", "dtype": "float32",
                                  "shape": [128, 160], "nbytes": BASE.nbytes}
    assert leaves["opt/0"]["path"] == ["opt", 0] and leaves["step"]["kind"] == "int"


def test_show_files_plain_keras_hdf5_and_ckpt_save(tmp_path: Path) -> None:
    keras = tmp_path / "model.h5"
    with h5py.File(keras, "w") as file:  # the layout of a legacy Keras model.save("m.h5")
        file.attrs["keras_version"] = "2.15.0"
        file.attrs["model_config"] = json.dumps({"class_name": "Sequential"})
        weights = file.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([b"dense", b"dense_1"])
        for layer, shape in (("dense", (20, 8)), ("dense_1", (8, 2))):
            group = weights.create_group(layer).create_group(layer)
            group.create_dataset("kernel:0", data=np.ones(shape, np.float32))
            group.create_dataset("bias:0", data=np.zeros(shape[1], np.float32))
    saved = tmp_path / "single.h5"
    ckpt.save(saved, {"a": np.arange(4), "b": {"c": 1.5}}, metadata={"origin": "test"})

    text = run_ckpt("show", keras)
    assert text.returncode == 0, text.stderr
    assert "plain HDF5 file" in text.stdout and '"2.15.0"' in text.stdout
    assert re.search(r"^model_weights/dense/dense/kernel:0\s+dataset\s+float32\s+\(20, 8\)"
                     r"\s+640 B$", text.stdout, re.M)
    assert "4 datasets" in text.stdout
    described = json.loads(run_ckpt("show", keras, "--json").stdout)
    assert described["format"] == "hdf5" and described["metadata"]["keras_version"] == "2.15.0"
    shapes = {leaf["key"]: (leaf["dtype"], leaf["shape"]) for leaf in described["leaves"]}
    assert shapes == {"model_weights/dense/dense/kernel:0": ("float32", [20, 8]),
                      "model_weights/dense/dense/bias:0": ("float32", [8]),
                      "model_weights/dense_1/dense_1/kernel:0": ("float32", [8, 2]),
                      "model_weights/dense_1/dense_1/bias:0": ("float32", [2])}

    own = json.loads(run_ckpt("show", saved, "--json").stdout)
    assert own["format"] == "ckpt-file" and own["metadata"] == {"origin": "test"}
    assert [(leaf["key"], leaf["kind"]) for leaf in own["leaves"]] == [
        ("a", "ndarray"), ("b/c", "float")]


# --------------------------------------------------------------- verify


def test_verify_intact(run_dir: Path) -> None:
    checked = run_ckpt("verify", run_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [f"step {s}" for s in STEPS]
    assert all(": OK (" in line for line in lines[:-1])
    assert lines[-1] == "5 checkpoints intact"
    one = run_ckpt("verify", run_dir, 30)
    assert one.returncode == 0 and one.stdout.startswith("step 30: OK")


def test_verify_finds_flipped_byte_and_damaged_manifests(run_copy: Path) -> None:
    data = run_copy / "step_30" / "state.h5"
    entry = leaf_entry(run_copy / "step_30", ["params", "w"])
    assert "pack" not in entry  # a large leaf: stored as its own dataset
    with open(data, "r+b") as handle:
        handle.seek(entry["offset"] + 1234)
        byte = handle.read(1)
        handle.seek(entry["offset"] + 1234)
        handle.write(bytes([byte[0] ^ 0x40]))
    (run_copy / "step_20" / "manifest.json").write_text("{not json")
    (run_copy / "step_60").mkdir()  # a step directory without any manifest

    checked = run_ckpt("verify", run_copy)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines = {line.split(":")[0]: line for line in checked.stdout.splitlines()}
    assert ": OK" in lines["step 10"] and ": OK" in lines["step 40"]
    failed = lines["step 30"]
    assert "FAILED" in failed and "step 30" in failed and str(data) in failed
    assert "params/w" in failed and "checksum mismatch" in failed
    assert "FAILED" in lines["step 20"] and "manifest.json" in lines["step 20"]
    assert "FAILED" in lines["step 60"] and "manifest is missing" in lines["step 60"]
    assert checked.stdout.splitlines()[-1] == "3 of 6 checkpoints FAILED"

    assert run_ckpt("verify", run_copy, 40).returncode == 0
    single = run_ckpt("verify", run_copy / "step_30")
    assert single.returncode == 1 and "params/w" in single.stdout


# ---------------------------------------------------------------- prune


def test_prune_dry_run_then_real(run_copy: Path) -> None:
    flags = ("--keep-last", 1, "--keep-every", 40, "--keep-best", "val_loss", "--mode", "min")
    dry = run_ckpt("prune", run_copy, *flags, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[:2] == [
        line for line in dry.stdout.splitlines() if line.startswith("would delete step")]
    assert "would delete step 10 " in dry.stdout and "would delete step 30 " in dry.stdout
    assert "kept steps: 20, 40, 50" in dry.stdout
    assert sorted(p.name for p in run_copy.glob("step_*")) == [f"step_{s}" for s in STEPS]

    real = run_ckpt("prune", run_copy, *flags)
    assert real.returncode == 0, real.stderr
    deleted = re.findall(r"^deleted step (\d+) ", real.stdout, re.M)
    assert deleted == ["10", "30"]
    assert sorted(os.listdir(run_copy)) == [".ckpt-clean", ".ckpt-listing", ".ckpt.lock", "step_20",
                                            "step_40", "step_50"]
    assert ckpt.CheckpointManager(run_copy).all_steps() == [20, 40, 50]


# ----------------------------------------------------------------- diff


def test_diff_two_steps(run_dir: Path) -> None:
    compared = run_ckpt("diff", run_dir, 10, 50)
    assert compared.returncode == 0, compared.stderr
    rows = {line.split()[-1] if line.startswith("only") else line.split()[1]: line
            for line in compared.stdout.splitlines()[1:-1]}
    assert rows["params/w"].startswith("changed") and "max abs diff 0.04" in rows["params/w"]
    assert rows["params/b"].startswith("same") and rows["name"].startswith("same")
    assert rows["step"].startswith("changed") and "max abs diff 40" in rows["step"]
    assert rows["warmup"].startswith("only in 10") and rows["extra"].startswith("only in 50")
    assert compared.stdout.splitlines()[-1] == "3 same, 4 changed, 1 only in 10, 1 only in 50"

    parsed = {d["key"]: d for d in json.loads(run_ckpt("diff", run_dir, 10, 50, "--json").stdout)}
    assert parsed["params/w"]["status"] == "changed"
    assert parsed["params/w"]["max_abs_diff"] == pytest.approx(0.04, rel=1e-3)
    assert parsed["opt/1/lr"]["max_abs_diff"] == pytest.approx(0.01 - 0.002)
    assert parsed["nothing"]["status"] == "same"
    assert (parsed["warmup"]["status"], parsed["extra"]["status"]) == ("only_a", "only_b")


# --------------------------------------------------------------- export


def test_export_npz_round_trip(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "step50.npz"
    exported = run_ckpt("export", run_dir, 50, out)
    assert exported.returncode == 0, exported.stderr
    assert "exported 7 arrays" in exported.stdout and "note: skipped nothing" in exported.stdout
    restored = ckpt.CheckpointManager(run_dir).restore(50)
    with np.load(out, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == sorted(
            ["params/w", "params/b", "opt/0", "opt/1/lr", "name", "step", "extra"])
        np.testing.assert_array_equal(arrays["params/w"], restored["params"]["w"])
        assert arrays["params/w"].dtype == np.float32
        assert arrays["opt/0"].shape == () and arrays["opt/0"] == 50
        assert arrays["step"].dtype == np.int64 and arrays["step"] == 50
        assert arrays["opt/1/lr"] == restored["opt"][1]["lr"]
        assert arrays["name"].tobytes() == b"run-1"


def test_export_safetensors_round_trip(run_dir: Path, tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    out = tmp_path / "step20.safetensors"
    exported = run_ckpt("export", run_dir, 20, out)
    assert exported.returncode == 0, exported.stderr
    tensors = safetensors_numpy.load_file(str(out))
    np.testing.assert_array_equal(tensors["params/w"], make_state(20)["params"]["w"])
    np.testing.assert_array_equal(tensors["params/b"], np.arange(16, dtype=np.float32))
    assert tensors["step"].shape == () and int(tensors["step"]) == 20
    assert "nothing" not in tensors


# --------------------------------------------------------------- errors


def test_bad_input_is_one_line_and_exit_2(run_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    (plain_dir / "readme.txt").write_text("not checkpoints")
    text_file = tmp_path / "notes.h5"
    text_file.write_text("not HDF5 at all")
    cases = [
        (("ls", missing), (str(missing), "not found")),
        (("verify", missing), (str(missing),)),
        (("ls", plain_dir), (str(plain_dir), "not a checkpoint directory")),
        (("show", run_dir, 7), ("step 7", "step_7")),
        (("verify", run_dir, 7), ("step 7",)),
        (("diff", run_dir, 10, 99), ("step 99",)),
        (("export", run_dir, 99, tmp_path / "x.npz"), ("step 99",)),
        (("export", run_dir, 50, tmp_path / "x.csv"), ("'.csv'", "x.csv")),
        (("export", run_dir, 50, missing / "x.npz"), (str(missing),)),
        (("show", text_file), (str(text_file), "not an HDF5 file")),
        (("prune", run_dir), ("--keep-last",)),
        (("prune", run_dir, "--keep-best", "accuracy"), ("'accuracy'",)),
        (("ls", run_dir, "--mode", "max"), ("--mode", "--keep-best")),
        # argparse's own errors are one line too, exit 2 (issue 11: exit codes)
        (("demo", "--steps", 0, "--dir", missing), ("argument --steps", "must be >= 1, got 0",
                                                    "ckpt demo --help")),
        (("demo", "--save-every", "x", "--dir", missing), ("--save-every", "'x'")),
        (("ls", run_dir, "--keep-last", 0), ("--keep-last", "must be >= 1")),
        (("ls", run_dir, "--nope"), ("unrecognized arguments: --nope",)),
        (("ls", run_dir, "--keep-best", "epoch"), ("--keep-best epoch", "--mode min",
                                                   "--mode max")),
        (("prune", run_dir, "--keep-best", "epoch"), ("--keep-best epoch",)),
    ]
    for args, names in cases:
        assert_error(run_ckpt(*args), *names)
    assert not missing.exists()  # nothing was created on the way
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob(".tmp-*"))
    assert sorted(p.name for p in run_dir.glob("step_*")) == [f"step_{s}" for s in STEPS]


@pytest.mark.torch
def test_torch_leaves_show_diff_export(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    directory = tmp_path / "torch_run"
    with ckpt.CheckpointManager(directory) as manager:
        for step, scale in ((1, 1.0), (2, 1.5)):
            manager.save(step, {"w": torch.full((3, 4), scale),
                                "h": torch.full((2,), scale, dtype=torch.bfloat16)})

    leaves = json.loads(run_ckpt("show", directory, "--json").stdout)["leaves"]
    assert [(leaf["key"], leaf["kind"], leaf["dtype"]) for leaf in leaves] == [
        ("w", "torch", "float32"), ("h", "torch", "bfloat16")]
    diffs = {d["key"]: d for d in json.loads(run_ckpt("diff", directory, 1, 2, "--json").stdout)}
    assert diffs["w"]["max_abs_diff"] == 0.5 and diffs["h"]["max_abs_diff"] == 0.5

    out = tmp_path / "torch.npz"
    exported = run_ckpt("export", directory, 2, out)
    assert exported.returncode == 0 and "note: skipped h: numpy has no bfloat16" in exported.stdout
    with np.load(out) as arrays:
        assert arrays.files == ["w"]
        np.testing.assert_array_equal(arrays["w"], np.full((3, 4), 1.5, np.float32))


# ------------------------------------------------ rough edges (issue 11)


def test_no_arguments_prints_usage_and_exits_2() -> None:
    result = run_ckpt()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: ckpt ") and "COMMAND" in result.stderr
    for command in ("demo", "ls", "show", "verify", "prune", "diff", "export"):
        assert re.search(rf"^\s+{command}\s", result.stderr, re.MULTILINE), command


def test_every_option_with_a_value_says_its_default_in_help() -> None:
    from ckpt.cli import build_parser

    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        for group in parser._action_groups:  # a group may state one default for all
            for action in group._group_actions:
                if isinstance(action, argparse._HelpAction):
                    continue
                optional_positional = not action.option_strings and action.nargs == "?"
                if action.option_strings or optional_positional:
                    text = f"{action.help} {group.description}".lower()
                    assert "default" in text, (name, action.dest, action.help)
    demo_help = run_ckpt("demo", "--help").stdout
    for shown in ("(default: ./ckpt-demo)", "(default: 3000)", "(default: 100)",
                  "(default: 0)", "(default: adam)"):
        assert shown in demo_help, shown
    for command, shown in (("ls", "Default: the policy the newest checkpoint"),
                           ("ls", "(default: auto)"), ("prune", "(default: 60)"),
                           ("show", "(default: latest)"), ("verify", "(default: all)")):
        assert shown in " ".join(run_ckpt(command, "--help").stdout.split()), (command, shown)


def demo_command(directory: Path, *args: object) -> list[str]:
    return [sys.executable, "-m", "ckpt.cli", "demo", "--dir", str(directory), "--no-progress",
            *map(str, args)]


def test_demo_runs_steps_1_to_n_and_checkpoints_every_k(tmp_path: Path) -> None:
    result = subprocess.run(demo_command(tmp_path / "run", "--steps", 250, "--save-every", 100),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "done: 250 steps" in result.stdout
    assert result.stdout.rstrip().endswith("checkpoints kept: 100, 200, 250")
    manager = ckpt.CheckpointManager(tmp_path / "run")
    assert manager.restore(100)["model"]["optimizer"]["iterations"] == 100  # 100 updates


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_interrupted_demo_saves_and_exits_128_plus_the_signal(tmp_path: Path, signum: int,
                                                              code: int) -> None:
    child = subprocess.Popen(demo_command(tmp_path / "run", "--steps", 100_000),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().startswith("checkpoints go to")
    deadline = time.monotonic() + 60
    while ckpt.CheckpointManager(tmp_path / "run").latest_step() is None:  # training runs
        assert time.monotonic() < deadline and child.poll() is None, child.stderr.read()
        time.sleep(0.05)
    child.send_signal(signum)
    out, err = child.communicate(timeout=60)
    assert child.returncode == code, err  # 128 + the signal, the shell's convention
    saved = int(out.split("interrupted: saved step ")[1].split(";")[0])
    manager = ckpt.CheckpointManager(tmp_path / "run")
    assert manager.latest_step() == saved
    assert manager.restore(saved)["model"]["optimizer"]["iterations"] == saved  # that step
    assert "Traceback" not in err


def test_keep_best_infers_the_direction_from_the_metric_name(tmp_path: Path) -> None:
    directory = tmp_path / "acc"
    accuracy = {1: 0.50, 2: 0.91, 3: 0.70, 4: 0.60}
    with ckpt.CheckpointManager(directory) as manager:
        for step, value in accuracy.items():
            manager.save(step, {"x": step}, metrics={"val_accuracy": value, "epoch": step})
    listed = json.loads(run_ckpt("ls", directory, "--keep-best", "val_accuracy",
                                 "--json").stdout)
    assert [row["kept_by"] for row in listed] == [[], ["best"], [], ["newest"]]  # the highest
    low = json.loads(run_ckpt("ls", directory, "--keep-best", "val_accuracy", "--mode", "min",
                              "--json").stdout)
    assert [row["kept_by"] for row in low] == [["best"], [], [], ["newest"]]  # as asked
    by_epoch = json.loads(run_ckpt("ls", directory, "--keep-best", "epoch", "--mode", "max",
                                   "--json").stdout)
    assert [row["kept_by"] for row in by_epoch] == [[], [], [], ["best"]]
    pruned = run_ckpt("prune", directory, "--keep-best", "val_accuracy")
    assert pruned.returncode == 0, pruned.stderr
    assert ckpt.CheckpointManager(directory).all_steps() == [2, 4]


def test_ls_and_prune_survive_metrics_that_cannot_rank(tmp_path: Path) -> None:
    directory = tmp_path / "odd"
    with ckpt.CheckpointManager(directory) as manager:
        for step, loss in ((1, 7), (2, 0.5), (3, float("nan")), (4, 0.9)):
            manager.save(step, {"x": step}, metrics={"loss": loss})
    manifest = directory / "step_1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"loss":7', '"loss":1' + "0" * 400))
    listed = run_ckpt("ls", directory, "--keep-best", "loss")
    assert listed.returncode == 0, listed.stderr
    # ckpt never writes such a metric (save refuses it): the manifest is damaged, and
    # listed as such instead of crashing the command
    assert "step_1 is not a valid checkpoint (metric 'loss' is an int too large" in \
        listed.stdout + listed.stderr
    rows = [row for row in listed.stdout.splitlines() if row[:5].strip().isdigit()]
    assert "loss=NaN" in rows[1]
    assert [row.split()[-1] for row in rows] == ["best", "(prune)", "newest"]
    assert run_ckpt("prune", directory, "--keep-best", "loss").returncode == 0
    assert ckpt.CheckpointManager(directory).all_steps() == [2, 4]
