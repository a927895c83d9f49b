"""Distributed saves on real multi-process gloo jobs (issue 13): DDP and FSDP2 saved
on N ranks, restored on 1, 2 and 3 ranks and in a single process with every tensor
equal to the saved full tensor; a rank killed or failing mid-save leaves no listed
step and no hang; a job SIGKILLed at a random moment resumes bit for bit.

Each rank is a real process (``tests/dist_worker.py``) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch.distributed")
import torch  # noqa: E402

import ckpt  # noqa: E402
from ckpt import manifest  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.integration.test_distributed_collective import free_port  # noqa: E402


def start_job(size: int, *args: str, env: dict | None = None,
              rank_env: dict | None = None) -> list[subprocess.Popen]:
    port = str(free_port())
    return [subprocess.Popen(
        [sys.executable, "-m", "tests.dist_worker", *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "RANK": str(rank), "WORLD_SIZE": str(size), "PORT": port,
             "OMP_NUM_THREADS": "1", **(env or {}), **((rank_env or {}).get(rank, {}))})
        for rank in range(size)]


def finish(processes: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str, str]]:
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise AssertionError("a rank hung") from None
        results.append((process.returncode, out, err))
    return results


def run_job(size: int, *args: str, **kwargs) -> list[tuple[int, str, str]]:
    results = finish(start_job(size, *args, **kwargs))
    for rank, (code, _, err) in enumerate(results):
        assert code == 0, (rank, err[-3000:])
    return results


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-identical model and optimizer state (full tensors, FQN keys)."""
    assert list(a["model"]) == list(b["model"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optim"]["state"].keys() == b["optim"]["state"].keys()
    for name, slots in a["optim"]["state"].items():
        for slot, value in slots.items():
            assert torch.equal(value, b["optim"]["state"][name][slot]), (name, slot)
    assert a["optim"]["param_groups"] == b["optim"]["param_groups"]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    """An FSDP2 job of 2 ranks that trained 6 steps, saving every 2 (keeps 4 and 6)."""
    directory = tmp_path_factory.mktemp("fsdp")
    run_job(2, "train", str(directory), "fsdp", "6")
    return directory


def test_fsdp_save_writes_one_file_per_rank_and_one_commit(fsdp_run):
    mgr = ckpt.CheckpointManager(fsdp_run)
    assert mgr.all_steps() == [4, 6]
    step_dir = fsdp_run / "step_6"
    assert sorted(p.name for p in step_dir.iterdir()) == [
        "manifest.json", "state.h5", "state.rank0.h5", "state.rank1.h5"]
    record = json.loads((step_dir / "manifest.json").read_text())
    assert record["distributed"] == {"world_size": 2}
    assert set(record["files"]) == {"state.h5", "state.rank0.h5", "state.rank1.h5"}
    assert mgr.info(6).nbytes == sum(p.stat().st_size for p in step_dir.glob("state*.h5"))
    # each shard of a sharded leaf is in its owner's file, with its offsets
    _, index = manifest.open_data(str(step_dir), 6, record)
    entry = next(e for e in index["leaves"] if e["path"] == ["model", "0.weight"])
    assert entry["shape"] == [37, 16]
    assert [(s["file"], s["offsets"], s["shape"]) for s in entry["shards"]] == [
        ("state.rank0.h5", [0, 0], [19, 16]), ("state.rank1.h5", [19, 0], [18, 16])]
    assert not list(fsdp_run.glob(".tmp-*"))


def test_fsdp_restores_in_one_process_without_a_process_group(fsdp_run):
    full = ckpt.load(fsdp_run / "final.h5")  # gathered by the job after step 6
    restored = ckpt.CheckpointManager(fsdp_run).restore()
    assert restored["step"] == 6
    assert_same_state(full, restored)
    # and into a plain model and optimizer (FQN keys mapped to the optimizer's own)
    from tests.dist_worker import build

    model, optimizer = build("plain")
    state = {"model": model, "optim": optimizer, "step": 0, "rng": ckpt.RNGState()}
    ckpt.CheckpointManager(fsdp_run).restore(into=state)
    assert state["step"] == 6
    for key, value in model.state_dict().items():
        assert torch.equal(value, full["model"][key]), key
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"],
                       full["optim"]["state"]["0.weight"]["exp_avg"])


@pytest.mark.parametrize("size", [1, 2, 3])
def test_fsdp_checkpoint_restores_on_any_world_size(fsdp_run, size):
    run_job(size, "restore", str(fsdp_run), "fsdp", env={"FORCE_DIST": "1"})
    restored = ckpt.load(fsdp_run / f"restored-{size}.h5")
    assert restored["step"] == 6
    assert_same_state(ckpt.load(fsdp_run / "final.h5"), restored)


def test_ddp_saved_on_three_ranks_restores_on_two_and_into_fsdp(tmp_path):
    run_job(3, "train", str(tmp_path), "ddp", "4", env={"SAVE_EVERY": "4"})
    assert sorted(p.name for p in (tmp_path / "step_4").iterdir()) == [
        "manifest.json", "state.h5", "state.rank0.h5"]  # replicated: written once
    full = ckpt.load(tmp_path / "final.h5")
    assert_same_state(full, ckpt.CheckpointManager(tmp_path).restore())
    run_job(2, "restore", str(tmp_path), "ddp")
    assert_same_state(full, ckpt.load(tmp_path / "restored-2.h5"))
    (tmp_path / "restored-2.h5").unlink()
    run_job(2, "restore", str(tmp_path), "fsdp")  # a DDP checkpoint, resharded
    assert_same_state(full, ckpt.load(tmp_path / "restored-2.h5"))


def test_large_replicated_leaves_are_spread_over_the_ranks(tmp_path, capsys):
    run_job(2, "train", str(tmp_path), "ddp", "2", env={"WIDE": "1"})
    files = sorted(p.name for p in (tmp_path / "step_2").iterdir())
    assert files == ["manifest.json", "state.h5", "state.rank0.h5", "state.rank1.h5"]
    sizes = [(tmp_path / "step_2" / f"state.rank{r}.h5").stat().st_size for r in (0, 1)]
    assert min(sizes) > 0.3 * max(sizes), sizes
    assert_same_state(ckpt.load(tmp_path / "final.h5"),
                      ckpt.CheckpointManager(tmp_path).restore())
    from ckpt.cli import main

    assert main(["verify", str(tmp_path)]) == 0
    assert "1 checkpoint intact" in capsys.readouterr().out


def _committed_steps(directory: Path) -> list[int]:
    return ckpt.CheckpointManager(directory).all_steps()


@pytest.mark.parametrize("victim, point", [(1, "data.after_write@2"),
                                           (0, "manifest.before_write@2")])
def test_rank_killed_mid_save_leaves_no_step_and_no_hang(tmp_path, victim, point):
    started = time.monotonic()
    results = finish(start_job(2, "train", str(tmp_path), "fsdp", "8",
                               env={"CKPT_TIMEOUT": "10"},
                               rank_env={victim: {"CKPT_FAILPOINT": point}}))
    assert time.monotonic() - started < 90
    assert results[victim][0] == -signal.SIGKILL
    survivor = results[1 - victim]
    assert survivor[0] == 7, survivor[2][-2000:]  # the worker's exit for a CheckpointError
    assert "failed" in survivor[1] or "after at most" in survivor[1], survivor[1]
    # the second save (step 4) died: step 2 is the newest listed step
    assert _committed_steps(tmp_path) == [2]
    # the next run removes the leftovers, resumes from step 2 and ends as an
    # uninterrupted run does
    results = run_job(2, "train", str(tmp_path), "fsdp", "8")
    assert '"resumed": 2' in results[0][1]
    assert not list(tmp_path.glob(".tmp-*"))
    reference = tmp_path / "reference"
    run_job(2, "train", str(reference), "fsdp", "8")
    assert_same_state(ckpt.load(reference / "final.h5"), ckpt.load(tmp_path / "final.h5"))


def test_a_rank_that_fails_to_write_fails_the_save_on_every_rank(tmp_path):
    results = finish(start_job(2, "train", str(tmp_path), "fsdp", "4",
                               rank_env={1: {"CKPT_FAILPOINT": "data.before_write@2:enospc"}}))
    assert [code for code, _, _ in results] == [7, 7]
    assert "disk is full" in results[1][1] or "No space" in results[1][1], results[1][1]
    assert "rank 1 failed to write step 4" in results[0][1], results[0][1]
    assert _committed_steps(tmp_path) == [2]
    assert not list(tmp_path.glob(".tmp-*"))  # removed at once, not left for the next run


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_job_killed_at_a_random_moment_resumes_bit_for_bit(tmp_path, kind):
    reference = tmp_path / "reference"
    run_job(2, "train", str(reference), kind, "12")
    directory = tmp_path / "run"
    processes = start_job(2, "train", str(directory), kind, "12", env={"STEP_DELAY": "0.15"})
    deadline = time.monotonic() + 120
    while not (directory / "step_4").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0, 0.6))  # anywhere in the steps after, saves included
    for process in processes:
        process.send_signal(signal.SIGKILL)
    finish(processes)
    steps = _committed_steps(directory)
    assert steps and steps[-1] < 12, steps
    results = run_job(2, "train", str(directory), kind, "12")
    assert f'"resumed": {steps[-1]}' in results[0][1]
    assert_same_state(ckpt.load(reference / "final.h5"), ckpt.load(directory / "final.h5"))
    assert np.array_equal(_committed_steps(directory), [10, 12])


@pytest.mark.parametrize("asynchronous", [False, True])
def test_sigterm_on_one_rank_saves_the_same_step_on_all_and_resumes(tmp_path, asynchronous):
    reference = tmp_path / "reference"
    run_job(2, "train", str(reference), "fsdp", "14")
    directory = tmp_path / "run"
    env = {"STEP_DELAY": "0.15", **({"ASYNC": "1"} if asynchronous else {})}
    processes = start_job(2, "loop", str(directory), "fsdp", "14", env=env)
    deadline = time.monotonic() + 120
    while not (directory / "step_4").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0, 0.3))
    processes[1].send_signal(signal.SIGTERM)  # the scheduler told one node only
    results = finish(processes)
    reports = [json.loads(out.splitlines()[-1]) for _, out, _ in results]
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    assert all(r["preempted"] for r in reports), reports
    stopped = reports[0]["last_saved"]
    assert reports[1]["last_saved"] == stopped and stopped < 14, reports
    assert _committed_steps(directory)[-1] == stopped
    results = run_job(2, "loop", str(directory), "fsdp", "14", env=env)
    assert json.loads(results[0][1].splitlines()[-1])["resumed"] == stopped
    assert_same_state(ckpt.load(reference / "final.h5"), ckpt.load(directory / "final.h5"))


def test_cli_reads_a_distributed_step_as_full_tensors(fsdp_run, tmp_path, capsys):
    from ckpt.cli import main

    assert main(["diff", str(fsdp_run), "4", "6"]) in (0, 1)
    assert "model/'0.weight'" in capsys.readouterr().out
    out = tmp_path / "weights.safetensors"
    assert main(["export", str(fsdp_run), "6", str(out)]) == 0
    from safetensors.numpy import load_file

    exported = load_file(str(out))
    full = ckpt.load(fsdp_run / "final.h5")
    assert np.array_equal(exported["model/0.weight"], full["model"]["0.weight"].numpy())


def test_readme_torchrun_example_runs_as_printed(tmp_path):
    port = str(free_port())
    processes = [subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "torch_distributed.py"),
         str(tmp_path / "ckpts-fsdp")], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"})
        for rank in range(2)]
    results = finish(processes)
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-2000:]
    assert results[0][1].strip() == "[150, 200] resumed from None"  # as commented
