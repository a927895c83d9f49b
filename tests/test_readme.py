"""The README's quick start and Lightning example run as printed and print what their
comments say."""

from __future__ import annotations

import re

import pytest

import ckpt
from tests.conftest import ROOT, run_python


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match, heading
    return match.group(1)


def test_quick_start_runs_and_restores_only_steps_it_kept(tmp_path):
    code = readme_block("## Quick start")
    # issue 11: it restored step 500, which its own retention policy had deleted
    script = f"import os; os.chdir({str(tmp_path)!r})\n{code}\nprint(mgr.last_restored_step)\n"
    out = run_python(script).stdout.split("\n")
    assert out[0] == "[400, 800, 900, 1000]"  # what the comment in the README says
    assert out[1] == "400"
    assert sorted(p.name for p in (tmp_path / "runs" / "exp1").iterdir()) == [
        ".ckpt-clean", ".ckpt-listing", ".ckpt.lock", "step_1000", "step_400", "step_800",
        "step_900"]


def test_lightning_example_runs_as_printed_and_model_checkpoint_writes_ckpt_files(tmp_path):
    pytest.importorskip("lightning")
    code = readme_block("## Lightning")
    script = f"import os; os.chdir({str(tmp_path)!r})\n{code}"
    assert run_python(script).stdout.strip().splitlines()[-1] == "96 [75, 96]"  # as commented
    # Lightning's default ModelCheckpoint wrote its file through CkptIO
    (written,) = (tmp_path / "checkpoints").iterdir()
    assert written.name == "epoch=2-step=96.ckpt"
    assert ckpt.load(written)["global_step"] == 96


def test_incremental_example_runs_and_links_the_frozen_leaf(tmp_path):
    code = readme_block("## Incremental saves")
    script = f"import os; os.chdir({str(tmp_path)!r})\n{code}"
    out = run_python(script).stdout.strip().splitlines()
    assert out == ["[3, 4] ['data.step1.h5', 'manifest.json', 'state.h5']"]  # as commented
    run = tmp_path / "runs" / "finetune"
    assert ((run / "step_3" / "data.step1.h5").stat().st_ino
            == (run / "step_4" / "data.step1.h5").stat().st_ino)
