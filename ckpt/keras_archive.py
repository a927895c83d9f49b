"""Read Keras' ``.keras`` archives (a zip of ``config.json``, ``metadata.json`` and
``model.weights.h5``) without Keras: for ``ckpt.load`` and ``ckpt show``.

The weights file is copied out of the zip (with a size limit: a zip can claim any
size) into a private temporary file and read like any other foreign HDF5 file,
with the same protections. Nothing in the archive is executed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

from ckpt.errors import CorruptCheckpointError

__all__ = ["is_keras_archive", "read_json_members", "weights_file"]

WEIGHTS_MEMBER = "model.weights.h5"
MAX_WEIGHTS_BYTES = 64 * 1024**3
MAX_JSON_BYTES = 64 * 1024**2


def is_keras_archive(path: str) -> bool:
    """True for a zip holding ``config.json`` (what ``model.save("m.keras")`` writes)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def read_json_members(path: str) -> dict[str, Any]:
    """``{"config": ..., "metadata": ...}``: the archive's JSON members, parsed."""
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in ("config.json", "metadata.json"):
                if name not in archive.namelist():
                    continue
                with archive.open(name) as member:
                    text = member.read(MAX_JSON_BYTES + 1)
                if len(text) > MAX_JSON_BYTES:
                    raise CorruptCheckpointError(path, f"{name} is larger than "
                                                 f"{MAX_JSON_BYTES >> 20} MiB", key=name)
                out[name.removesuffix(".json")] = json.loads(text)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CorruptCheckpointError(path, f"unreadable .keras archive ({error})") from None
    return out


@contextlib.contextmanager
def weights_file(path: str) -> Iterator[str | None]:
    """The archive's ``model.weights.h5`` as a temporary file path (None if absent)."""
    directory = tempfile.mkdtemp(prefix="ckpt-keras-")
    try:
        try:
            with zipfile.ZipFile(path) as archive:
                if WEIGHTS_MEMBER not in archive.namelist():
                    yield None
                    return
                target = os.path.join(directory, WEIGHTS_MEMBER)
                with archive.open(WEIGHTS_MEMBER) as member, open(target, "wb") as out:
                    _copy_limited(member, out, path)
        except (zipfile.BadZipFile, OSError) as error:
            raise CorruptCheckpointError(path, f"unreadable .keras archive ({error})",
                                         key=WEIGHTS_MEMBER) from None
        yield target
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _copy_limited(source: Any, target: Any, path: str) -> None:
    copied = 0
    while chunk := source.read(16 * 1024**2):
        copied += len(chunk)
        if copied > MAX_WEIGHTS_BYTES:
            raise CorruptCheckpointError(path, "model.weights.h5 expands beyond "
                                         f"{MAX_WEIGHTS_BYTES >> 30} GiB", key=WEIGHTS_MEMBER)
        target.write(chunk)
