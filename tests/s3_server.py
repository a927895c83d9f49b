"""A real S3-compatible HTTP server for the object-store tests: moto in server mode.

``s3_server`` (one per session) starts ``python -m moto.server`` on 127.0.0.1 on a
free port in a subprocess, waits until it answers HTTP and kills it at the end.
``s3`` (one per test) creates a fresh bucket on it. Nothing leaves the loopback
interface: the endpoint is given explicitly, and while the server runs the
standard AWS environment variables (endpoint, dummy credentials, no EC2 metadata
lookup) point this process and the children the tests start at it, so that even a
URL opened without storage options reaches only the test server.

Both fixtures skip when s3fs or moto (the ``test`` extra) is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

START_SECONDS = 60.0  # moto imports Flask and every service model: slow on busy cores


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint, fsspec options and child environment."""

    endpoint: str
    process: subprocess.Popen

    @property
    def options(self) -> dict[str, Any]:
        """``storage_options`` for ``CheckpointManager`` and ``s3fs.S3FileSystem``."""
        return {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}

    @property
    def variables(self) -> dict[str, str]:
        """The AWS environment variables that lead botocore (and s3fs) here."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    @property
    def env(self) -> dict[str, str]:
        """Environment of a child process (the CLI) that finds this server on its own."""
        return {**os.environ, **self.variables}


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket on the test server; ``url`` is a prefix inside it."""

    name: str
    server: S3Server
    fs: Any  # s3fs.S3FileSystem

    @property
    def url(self) -> str:
        """``s3://<bucket>/run``, where a test's checkpoints go."""
        return f"s3://{self.name}/run"

    @property
    def options(self) -> dict[str, Any]:
        """The server's storage options."""
        return self.server.options

    def objects(self, prefix: str = "") -> list[str]:
        """Every object under ``<bucket>/<prefix>``, listed afresh (no cache)."""
        path = f"{self.name}/{prefix}".rstrip("/")
        self.fs.invalidate_cache()
        try:
            return sorted(self.fs.find(path))
        except FileNotFoundError:
            return []


def _missing() -> str | None:
    for module in ("s3fs", "moto", "flask"):  # flask: moto's [server] extra
        if importlib.util.find_spec(module) is None:
            return module
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # an HTTP error is an answer
    except OSError:
        return False


def start_server(log: Any, kind: str = "moto", data_dir: str | None = None) -> S3Server:
    """Start an S3 server on a free loopback port; raise if it does not answer in time.

    ``kind`` is ``"moto"`` (what the tests use) or ``"localbucket"`` (objects as
    plain files in ``data_dir``, ranged GETs read only their range: used by
    ``benchmarks/bench_storage.py`` beside moto, which reads the whole object for
    every ranged GET).
    """
    for _ in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        command = ([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
                   if kind == "moto" else
                   [sys.executable, "-m", "localbucket", str(data_dir), "--host", "127.0.0.1",
                    "--port", str(port)])
        process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(endpoint):
                return S3Server(endpoint, process)
            time.sleep(0.1)
        process.kill()
        process.wait()
    log.seek(0)
    raise RuntimeError(f"{kind} server did not start:\n{log.read()[-2000:]!r}")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 for the whole session."""
    missing = _missing()
    if missing:
        pytest.skip(f"object-store tests need {missing} (pip install -e '.[test]')")
    with tempfile.TemporaryFile("w+") as log, pytest.MonkeyPatch.context() as patch:
        server = start_server(log)
        for name, value in server.variables.items():
            patch.setenv(name, value)
        try:
            yield server
        finally:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def s3(s3_server: S3Server) -> Iterator[Bucket]:
    """A fresh, empty bucket on the session's server, emptied again afterwards."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.options, skip_instance_cache=True)
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    try:
        yield Bucket(name, s3_server, fs)
    finally:
        fs.invalidate_cache()
        try:
            fs.rm(name, recursive=True)
        except FileNotFoundError:
            pass
