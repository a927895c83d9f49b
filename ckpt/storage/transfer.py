"""Moving bytes to and from an object store in parallel (used by :mod:`.remote`).

* **Uploads** go in parts of ``PART_BYTES``, ``CONCURRENCY`` at a time, completed
  by one request, so the object appears whole or not at all (conditionally, when
  asked: ``If-None-Match: *``). Memory: ``CONCURRENCY * PART_BYTES`` of part copies.
* **Reads** merge the byte ranges asked for where they (nearly) touch, cut them
  into pieces of ``READ_BYTES``, fetch ``CONCURRENCY`` pieces at a time with ranged
  GETs and stream each body straight into the caller's buffers: no copy of an
  object is held, and a restore of some leaves reads only their bytes.

Every failure of the filesystem is an ``OSError`` (:class:`OSErrorsOnly`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ckpt import _failpoints

__all__ = ["PART_BYTES", "READ_BYTES", "CONCURRENCY", "OSErrorsOnly", "upload", "read_into",
           "plan_reads"]

PART_BYTES = 16 * 1024 * 1024  # multipart part size (S3: at least 5 MiB, at most 10,000 parts)
READ_BYTES = 64 * 1024 * 1024  # ranged-read piece size
CONCURRENCY = 8  # parts or pieces in flight at once
MERGE_GAP = 1024 * 1024  # read through a gap this small rather than send another request
STREAM_CHUNK = 1024 * 1024  # a body is copied out in pieces of at most this size
READ_ATTEMPTS = 3  # a body cut short by a dropped connection is resumed where it stopped

Piece = tuple[int, int, list[tuple[int, memoryview]]]  # (start, end, targets inside)


class OSErrorsOnly:
    """An fsspec filesystem whose every failure is an ``OSError``.

    s3fs turns S3's answers into ``OSError`` subclasses, but a failure to get an
    answer (no route to the endpoint, no credentials, a bad bucket name) arrives as
    botocore's or aiohttp's own exception. Callers (the manager, readers, the CLI)
    handle ``OSError``; everything else would be a traceback.
    """

    def __init__(self, fs: Any, protocol: str) -> None:
        self.raw, self._protocol = fs, protocol

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.raw, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except OSError:
                raise
            except Exception as error:  # noqa: BLE001 - translated, not swallowed
                raise as_os_error(error, self._where(name, args, kwargs)) from error

        return call

    def _where(self, method: str, args: tuple, kwargs: dict) -> str | None:
        if method == "call_s3" and "Bucket" in kwargs:
            return f"{self._protocol}://{kwargs['Bucket']}/{kwargs.get('Key', '')}"
        if args and isinstance(args[0], str):
            return f"{self._protocol}://{args[0]}"
        return None


def as_os_error(error: Exception, where: str | None) -> OSError:
    """``error`` itself when it is an ``OSError``, else an ``OSError`` that names it."""
    if isinstance(error, OSError):
        return error
    code = errno.EINVAL if isinstance(error, (ValueError, TypeError)) else errno.EIO
    return OSError(code, f"{type(error).__name__}: {error}", where)


# ------------------------------------------------------------------ upload


def upload(fs: OSErrorsOnly, path: str, size: int, chunks: list[tuple[int, Any]], done: Any,
           create: bool) -> None:
    """Write object ``path`` of ``size`` bytes from ``(offset, buffer)`` chunks (gaps
    are zeros); ``create``: only if nothing is there (``FileExistsError`` otherwise)."""
    _failpoints.hit("data.before_write")
    if size <= PART_BYTES:
        fs.pipe_file(path, bytes(_assemble(chunks, 0, size)),
                     mode="create" if create else "overwrite")
        done(size)
    elif hasattr(fs.raw, "call_s3"):
        _multipart(fs, path, size, chunks, done, create)
    else:  # another fsspec filesystem: stream it (its own atomicity, no create check)
        with fs.open(path, "wb") as handle:
            for start in range(0, size, PART_BYTES):
                part = _assemble(chunks, start, min(size, start + PART_BYTES))
                handle.write(part)
                _failpoints.hit("data.part_written")
                done(len(part))
    fs.invalidate_cache(path)
    _failpoints.hit("data.after_write")


def _multipart(fs: OSErrorsOnly, path: str, size: int, chunks: list[tuple[int, Any]],
               done: Any, create: bool) -> None:
    bucket, key, _ = fs.split_path(path)
    upload_id = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    starts = list(range(0, size, PART_BYTES))

    def send(number: int) -> dict:
        start = starts[number]
        body = bytes(_assemble(chunks, start, min(size, start + PART_BYTES)))
        out = fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id,
                         PartNumber=number + 1, Body=body)
        _failpoints.hit("data.part_written")
        done(len(body))
        return {"PartNumber": number + 1, "ETag": out["ETag"]}

    condition = {"IfNoneMatch": "*"} if create else {}
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            parts = list(pool.map(send, range(len(starts))))
        fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                   MultipartUpload={"Parts": parts}, **condition)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def _assemble(chunks: list[tuple[int, Any]], start: int, end: int) -> memoryview:
    """Bytes ``start:end`` of the file the chunks describe (gaps are zeros)."""
    out = bytearray(end - start)
    for offset, data in chunks:
        view = memoryview(data).cast("B")
        lo, hi = max(start, offset), min(end, offset + len(view))
        if lo < hi:
            out[lo - start:hi - start] = view[lo - offset:hi - offset]
    return memoryview(out)


# -------------------------------------------------------------------- read


def plan_reads(ranges: Sequence[tuple[int, memoryview]]) -> list[Piece]:
    """The GETs that fill ``(offset, view)`` ranges: merged across small gaps, cut
    into pieces of at most ``READ_BYTES``, each with the ranges it feeds."""
    spans: list[list] = []  # [start, end, targets]
    for offset, view in sorted(ranges, key=lambda item: item[0]):
        end = offset + len(view)
        if spans and offset - spans[-1][1] <= MERGE_GAP:
            spans[-1][1] = max(spans[-1][1], end)
            spans[-1][2].append((offset, view))
        else:
            spans.append([offset, end, [(offset, view)]])
    pieces = []
    for start, end, targets in spans:
        for lo in range(start, end, READ_BYTES):
            hi = min(end, lo + READ_BYTES)
            pieces.append((lo, hi, [(o, v) for o, v in targets if o < hi and o + len(v) > lo]))
    return pieces


def read_into(fs: OSErrorsOnly, path: str, ranges: Sequence[tuple[int, memoryview]],
              done: Any = None) -> None:
    """Fill every ``(offset, view)`` from object ``path`` (the ranges must lie inside it).

    ``done(nbytes)`` as bytes arrive. ``EOFError`` when the object is shorter than a
    range (it changed under us); an ``OSError`` (``FileNotFoundError`` when it is
    gone) carries the ``offset`` it failed at, for the error message.
    """
    pieces = plan_reads([(o, v) for o, v in ranges if len(v)])
    done = done or (lambda nbytes: None)
    if hasattr(fs.raw, "_call_s3"):
        from fsspec.asyn import sync

        try:
            sync(fs.raw.loop, _fetch_all, fs.raw, path, pieces, done)
        except (EOFError, OSError):
            raise
        except Exception as error:  # noqa: BLE001 - translated, not swallowed
            raise as_os_error(error, path) from error
        return

    def fetch(piece: Piece) -> None:
        start, end, targets = piece
        data = fs.cat_file(path, start=start, end=end)
        if len(data) != end - start:
            _fail(EOFError(f"{path} ends before {end}"), start + len(data))
        _scatter(targets, start, memoryview(data))
        done(len(data))

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(fetch, pieces))


async def _fetch_all(raw: Any, path: str, pieces: list[Piece], done: Any) -> None:
    bucket, key, _ = raw.split_path(path)
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(piece: Piece) -> None:
        async with slots:
            await _fetch(raw, bucket, key, piece, done)

    tasks = [asyncio.ensure_future(one(piece)) for piece in pieces]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _fetch(raw: Any, bucket: str, key: str, piece: Piece, done: Any) -> None:
    """One ranged GET, its body copied into the piece's targets as it arrives."""
    start, end, targets = piece
    position, attempts = start, 0
    while position < end:
        try:
            response = await raw._call_s3("get_object", Bucket=bucket, Key=key,
                                          Range=f"bytes={position}-{end - 1}")
        except Exception as error:  # noqa: BLE001 - s3fs retried what it could
            _fail(as_os_error(error, f"s3://{bucket}/{key}"), position)
        body = response["Body"]
        try:
            while position < end:
                chunk = await body.read(min(STREAM_CHUNK, end - position))
                if not chunk:
                    _fail(EOFError(f"s3://{bucket}/{key} ends at {position}"), position)
                _scatter(targets, position, memoryview(chunk))
                position += len(chunk)
                done(len(chunk))
        except EOFError:
            raise
        except Exception as error:  # noqa: BLE001 - a connection dropped mid-body
            attempts += 1
            if attempts >= READ_ATTEMPTS:
                _fail(as_os_error(error, f"s3://{bucket}/{key}"), position)
        finally:
            body.close()


def _scatter(targets: list[tuple[int, memoryview]], position: int, data: memoryview) -> None:
    """Copy ``data`` (the object's bytes from ``position``) into the targets it overlaps."""
    end = position + len(data)
    for offset, view in targets:
        lo, hi = max(position, offset), min(end, offset + len(view))
        if lo < hi:
            view[lo - offset:hi - offset] = data[lo - position:hi - position]


def _fail(error: BaseException, offset: int) -> None:
    error.offset = offset  # which leaf failed, for the error message
    raise error
