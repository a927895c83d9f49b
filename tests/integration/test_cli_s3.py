"""The ``ckpt`` command on ``s3://`` URLs, in a real subprocess against moto.

The child finds the server the way a user's shell would: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (read by botocore, which s3fs
uses); no storage options are passed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import ckpt
from tests.conftest import ROOT
from tests.integration.test_cli import assert_error

LOSS = {1: 0.5, 2: 0.2, 3: 0.4}


def run_ckpt(s3, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckpt.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**s3.server.env, "COLUMNS": "100"})


@pytest.fixture
def run(s3):
    """Three steps in ``s3.url``, written by a manager with explicit options."""
    with ckpt.CheckpointManager(s3.url, storage_options=s3.options) as manager:
        for step, loss in LOSS.items():
            manager.save(step, {"w": np.full(5000, step, np.float32), "step": step},
                         metrics={"val_loss": loss})
    return s3


def test_ls_lists_the_steps(run):
    result = run_ckpt(run, "ls", run.url)
    assert result.returncode == 0, result.stderr
    rows = [line.split()[0] for line in result.stdout.splitlines()[1:-1]]
    assert rows == ["1", "2", "3"] and "3 checkpoints" in result.stdout
    listed = json.loads(run_ckpt(run, "ls", run.url, "--json").stdout)
    assert [(r["step"], r["path"], r["valid"]) for r in listed] == [
        (s, f"{run.url}/step_{s}", True) for s in (1, 2, 3)]
    assert all(r["nbytes"] > 20_000 for r in listed)  # sizes of the objects


def test_show_a_step_a_step_prefix_and_a_single_file(run):
    result = run_ckpt(run, "show", run.url, 2)
    assert result.returncode == 0, result.stderr
    assert f"step 2 in {run.url}/step_2" in result.stdout and "val_loss=0.2" in result.stdout
    assert ["w", "ndarray", "float32", "(5000,)", "19.5", "KiB"] in [
        line.split() for line in result.stdout.splitlines()]
    latest = run_ckpt(run, "show", f"{run.url}/step_3")
    assert latest.returncode == 0 and f"step 3 in {run.url}/step_3" in latest.stdout
    ckpt.save(f"s3://{run.name}/one.h5", {"a": np.arange(3)}, metadata={"note": "x"})
    single = run_ckpt(run, "show", f"s3://{run.name}/one.h5")
    assert single.returncode == 0, single.stderr
    assert "(ckpt file" in single.stdout and "note" in single.stdout


def test_verify_passes_then_names_a_damaged_step(run):
    result = run_ckpt(run, "verify", run.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "3 checkpoints intact"
    path = f"{run.name}/run/step_2/state.h5"
    data = bytearray(run.fs.cat_file(path))
    data[data.find(np.full(5000, 2, np.float32).tobytes()) + 100] ^= 0xFF  # inside w
    run.fs.pipe_file(path, bytes(data))
    damaged = run_ckpt(run, "verify", run.url)
    assert damaged.returncode == 1
    assert f"step 2: FAILED: corrupt checkpoint step 2: {run.url}/step_2/state.h5 at key w" \
        in damaged.stdout
    assert "step 1: OK" in damaged.stdout and "step 3: OK" in damaged.stdout


def test_prune_dry_run_then_prune(run):
    dry = run_ckpt(run, "prune", run.url, "--keep-best", "val_loss", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete step 1" in dry.stdout and "kept steps: 2, 3" in dry.stdout
    assert ckpt.CheckpointManager(run.url).all_steps() == [1, 2, 3]
    pruned = run_ckpt(run, "prune", run.url, "--keep-last", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert "deleted 2 of 3 checkpoints" in pruned.stdout
    assert ckpt.CheckpointManager(run.url).all_steps() == [3]
    assert [n for n in run.objects("run") if "/step_1/" in n or "/step_2/" in n] == []


def test_diff_and_export(run, tmp_path):
    diff = run_ckpt(run, "diff", run.url, 1, 3)
    assert diff.returncode == 0, diff.stderr
    assert "changed  w" in diff.stdout and "max abs diff 2" in diff.stdout
    out = tmp_path / "step2.npz"
    exported = run_ckpt(run, "export", run.url, 2, out)
    assert exported.returncode == 0, exported.stderr
    with np.load(out, allow_pickle=False) as arrays:
        assert (arrays["w"] == 2).all() and int(arrays["step"]) == 2


def test_bad_urls_are_one_error_line(run):
    assert_error(run_ckpt(run, "ls", f"s3://{run.name}/nothing"), f"s3://{run.name}/nothing",
                 "no such directory")
    assert_error(run_ckpt(run, "ls", f"s3://{run.name}-missing/run"), "no such directory")
    run.fs.pipe_file(f"{run.name}/other/notes.txt", b"hello")
    assert_error(run_ckpt(run, "verify", f"s3://{run.name}/other"), "not a checkpoint directory")
    assert_error(run_ckpt(run, "show", f"s3://{run.name}/other/notes.txt"), "local paths only")
    assert_error(run_ckpt(run, "export", run.url, 2, f"s3://{run.name}/x.npz"), "local file")
    assert_error(run_ckpt(run, "show", run.url, 9), f"{run.url}/step_9")


def test_an_unreachable_endpoint_is_one_error_line(s3_server):
    """botocore's own exceptions (not OSError) must not reach the user as a traceback."""
    closed = s3_server.variables | {"AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                                    "AWS_MAX_ATTEMPTS": "1"}  # port 9: nothing listens
    result = subprocess.run([sys.executable, "-m", "ckpt.cli", "ls", "s3://bucket/run"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**s3_server.env, **closed})
    assert_error(result, "s3://bucket/run", "Could not connect")
