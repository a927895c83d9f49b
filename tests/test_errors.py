"""Every error class: its built-in base, what its message names, and pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import ckpt


def test_error_classes_subclass_the_matching_builtins():
    assert issubclass(ckpt.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(ckpt.StateMismatchError, ValueError)
    assert issubclass(ckpt.UnsupportedTypeError, TypeError)
    assert issubclass(ckpt.StepExistsError, FileExistsError)
    assert issubclass(ckpt.LockTimeoutError, TimeoutError)
    for cls in (ckpt.CheckpointNotFoundError, ckpt.CorruptCheckpointError,
                ckpt.StateMismatchError, ckpt.UnsupportedTypeError, ckpt.StepExistsError,
                ckpt.LockTimeoutError):
        assert issubclass(cls, ckpt.CheckpointError)


@pytest.mark.parametrize("error, names", [
    (ckpt.CheckpointNotFoundError("/d/step_4", 4), ["/d/step_4", "step 4"]),
    (ckpt.CorruptCheckpointError("/d/step_4/state.h5", "checksum mismatch", "model/w", 4),
     ["/d/step_4/state.h5", "model/w", "step 4", "checksum"]),
    (ckpt.StateMismatchError("/d/step_4", [("model/w", "shape", "(3,)", "(4,)")]),
     ["/d/step_4", "model/w", "shape", "(3,)", "(4,)"]),
    (ckpt.UnsupportedTypeError("opt/0", "set"), ["opt/0", "set"]),
    (ckpt.StepExistsError("/d/step_4", 4), ["/d/step_4", "step 4"]),
    (ckpt.LockTimeoutError("/d/.ckpt.lock", 2.5), ["/d/.ckpt.lock", "2.5"]),
])
def test_messages_name_what_they_should_and_survive_pickling(error, names):
    for name in names:
        assert name in str(error)
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error) and str(clone) == str(error)


def test_real_errors_name_file_key_and_step(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(2, {"layer": {"kernel": np.zeros((3, 4))}})
    with pytest.raises(ckpt.StateMismatchError) as info:
        mgr.restore(2, into={"layer": {"kernel": np.zeros((4, 4))}})
    assert "layer/kernel" in str(info.value) and "(3, 4)" in str(info.value)
    with pytest.raises(ckpt.CheckpointNotFoundError) as missing:
        mgr.restore(9)
    assert "step_9" in str(missing.value) and missing.value.step == 9
    with pytest.raises(ckpt.CheckpointNotFoundError, match="nothing.h5"):
        ckpt.load(tmp_path / "nothing.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk" * 100)
    with pytest.raises(ckpt.CorruptCheckpointError, match="junk.h5.*not an HDF5 file"):
        ckpt.load(tmp_path / "junk.h5")
