"""CheckpointManager, ckpt.save/load and the commit protocol on a real S3 server.

The server is moto in server mode on 127.0.0.1, started by the ``s3_server``
fixture (``tests/s3_server.py``); each test gets a fresh bucket.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def test_the_server_is_on_loopback_and_the_bucket_starts_empty(s3):
    assert urlsplit(s3.server.endpoint).hostname == "127.0.0.1"
    assert s3.objects() == []
    s3.fs.pipe_file(f"{s3.name}/probe", b"x")
    assert s3.objects() == [f"{s3.name}/probe"]
