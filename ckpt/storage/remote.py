"""Object stores (any fsspec filesystem; S3 through s3fs is the one tested).

An object store has no rename and no directories, so the commit works differently
from local disk, with the same promise to readers:

* **The manifest is the commit record.** A step's data objects are uploaded first
  under ``<root>/step_<N>/``, the manifest last. Every object of a step is created
  with a conditional create (``If-None-Match: *`` on S3, also on the completion of
  a multipart upload), so two writers can neither both commit one step nor
  overwrite each other's data: the second gets ``StepExistsError``. A step without
  a manifest is invisible: readers list manifests, not prefixes.
* **Deletion removes the manifest first**, so a step is never listed half-deleted;
  a crash in between leaves data without a manifest, which the next writer removes
  (as it removes the data of a writer killed mid-upload, and aborts the multipart
  uploads such a writer left unfinished under the prefix).
* **Writers serialize on a lease object** ``<root>/.ckpt.lease``, created with a
  conditional create, renewed by a heartbeat while held and released after the
  save. A lease whose heartbeat stopped (its holder died) is taken over after
  ``LEASE_SECONDS``, or at once when its holder was a dead process on this host.
  Taking over an expired lease is not atomic on stores without conditional
  deletes: the contract for object stores is one writer per prefix, and the lease
  catches a second writer started by mistake.

Large files go up as parallel multipart uploads and come back as parallel ranged
reads streamed into the caller's buffers (:mod:`.transfer`): restore reads only the
byte ranges of the leaves asked for.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from ckpt import _failpoints, fsutil
from ckpt._progress import progress_bar
from ckpt.errors import CheckpointError, CorruptCheckpointError, LockTimeoutError, StepExistsError
from ckpt.storage import Reader, StepWriter, Store, transfer

__all__ = ["FsspecStore", "FsspecReader", "LEASE_NAME", "LEASE_SECONDS"]

log = logging.getLogger("ckpt")

LEASE_NAME = ".ckpt.lease"
LEASE_SECONDS = 60.0  # a lease not renewed for this long belongs to a dead writer
MANIFEST_NAME = "manifest.json"  # the format's name (ckpt.manifest), known here for listing


def _filesystem(protocol: str, options: dict) -> Any:
    try:
        import fsspec
    except ImportError:
        raise CheckpointError(f"{protocol}:// URLs need fsspec: pip install 'ckpt[s3]'") from None
    try:
        return transfer.OSErrorsOnly(fsspec.filesystem(protocol, **options), protocol)
    except (ImportError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot use {protocol}:// ({error}); for S3: "
                              "pip install 'ckpt[s3]'") from None


class FsspecReader(Reader):
    """Byte ranges of one object; many ranges are fetched concurrently."""

    def __init__(self, store: FsspecStore, location: str) -> None:
        self.store, self.name = store, location
        self.path = store.path(location)
        try:
            info = store.fs.info(self.path)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise CorruptCheckpointError(location, f"cannot open ({error})") from None
        if info.get("type") != "file":
            raise CorruptCheckpointError(location, "not a regular file")
        self.size = int(info["size"])

    def readinto_at(self, view: memoryview, offset: int) -> int:
        end = min(self.size, offset + len(view))
        if end <= offset:
            return 0
        data = self.store.fs.cat_file(self.path, start=offset, end=end)
        view[:len(data)] = data
        return len(data)

    def read_ranges(self, ranges: Sequence[tuple[int, memoryview]], done: Any = None) -> None:
        for offset, view in ranges:
            if offset + len(view) > self.size:
                error = EOFError(f"{self.name} ends at {self.size}")
                error.offset = max(offset, self.size)
                raise error
        transfer.read_into(self.store.fs, self.path, ranges, done)


class FsspecStepWriter(StepWriter):
    """Objects under the step's final prefix; the manifest, created last, commits."""

    def __init__(self, store: FsspecStore, root: str, name: str) -> None:
        self.store = store
        self.final = self.location = f"{root}/{name}"
        self.written: list[str] = []

    def write_file(self, name: str, size: int, chunks: list[tuple[int, Any]],
                   progress: bool | None = None) -> None:
        path = self.store.path(f"{self.location}/{name}")
        self.written.append(path)  # abort() removes it, whatever failed after its creation
        with progress_bar(size, f"uploading {name}", progress) as bar:
            try:
                self.store.upload(path, size, chunks, bar.update, create=True)
            except FileExistsError:
                # another writer is writing (or wrote) this step: that object is not ours
                self.written.remove(path)
                raise StepExistsError(self.final, _step_of(self.final)) from None

    def commit(self, manifest: bytes) -> None:
        path = self.store.path(f"{self.location}/{MANIFEST_NAME}")
        _failpoints.hit("manifest.before_write")
        try:
            self.store.fs.pipe_file(path, manifest, mode="create")
        except FileExistsError:
            # another writer committed this step first; the objects are its now
            self.written.clear()
            raise StepExistsError(self.final, _step_of(self.final)) from None
        self.store.invalidate(self.final)
        _failpoints.hit("commit.after_manifest")

    def abort(self) -> None:
        for path in self.written:
            with contextlib.suppress(OSError):
                self.store.fs.rm_file(path)


def _step_of(location: str) -> int | None:
    return fsutil.parse_step_dir(location.rsplit("/", 1)[-1])


class FsspecStore(Store):
    """A prefix on an fsspec filesystem (``s3://bucket/run``)."""

    local = False
    lock_name = LEASE_NAME

    def __init__(self, protocol: str, options: dict) -> None:
        self.protocol = protocol
        # no listings cache: other processes write and delete under the same prefix, and
        # a cached listing would hide their objects (fsspec answers from it without asking)
        self.fs = _filesystem(protocol, {"use_listings_cache": False, **options})
        self._listed: dict[str, tuple] = {}  # manifest path -> signature, from listings
        self._mutex = threading.Lock()

    # ------------------------------------------------------------ names

    def path(self, location: str) -> str:
        """The filesystem's own path of a URL (``bucket/run/step_5``)."""
        return self.fs._strip_protocol(location).rstrip("/")

    def url(self, path: str) -> str:
        """The URL of a filesystem path (for messages and StepInfo paths)."""
        return f"{self.protocol}://{path}"

    def invalidate(self, location: str) -> None:
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.path(location))

    # ---------------------------------------------------------- listing

    def _objects(self, root: str) -> dict[str, dict]:
        path = self.path(root)
        self.fs.invalidate_cache(path)
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        return {name: info for name, info in found.items() if info.get("type") == "file"}

    def _scan(self, root: str) -> tuple[dict[int, str], dict[int, list[str]]]:
        """``(committed steps, {step: objects of steps without a manifest})``."""
        prefix = self.path(root) + "/"
        committed: dict[int, str] = {}
        objects: dict[int, list[str]] = {}
        listed = {}
        for name, info in self._objects(root).items():
            rest = name[len(prefix):] if name.startswith(prefix) else None
            if rest is None or "/" not in rest:
                continue
            top, _, inner = rest.partition("/")
            step = fsutil.parse_step_dir(top)
            if step is None:
                continue
            objects.setdefault(step, []).append(name)
            if inner == MANIFEST_NAME:
                committed[step] = self.url(prefix + top)
                listed[name] = (info.get("ETag") or info.get("mtime") or info.get("LastModified"),
                                info.get("size"))
        with self._mutex:
            self._listed = listed
        partial = {s: names for s, names in objects.items() if s not in committed}
        return dict(sorted(committed.items())), partial

    def step_dirs(self, root: str) -> dict[int, str]:
        steps, _ = self._scan(root)
        if not steps and not self.fs.exists(self.path(root)):
            raise FileNotFoundError(root)
        return steps

    def committed(self, step_location: str) -> bool:
        return self.fs.exists(self.path(f"{step_location}/{MANIFEST_NAME}"))

    def exists(self, location: str) -> bool:
        return self.fs.exists(self.path(location))

    def isdir(self, location: str) -> bool:
        path = self.path(location)
        self.fs.invalidate_cache(path)
        return self.fs.isdir(path)

    def open(self, location: str) -> Reader:
        return FsspecReader(self, location)

    def signature(self, location: str) -> tuple | None:
        path = self.path(location)
        with self._mutex:
            known = self._listed.get(path)
        if known is not None:
            return known
        try:
            info = self.fs.info(path)
        except OSError:
            return None
        return (info.get("ETag") or info.get("mtime") or info.get("LastModified"),
                info.get("size"))

    def tree_size(self, location: str) -> int:
        return sum(int(info.get("size") or 0) for info in self._objects(location).values())

    # ---------------------------------------------------------- writing

    def makedirs(self, root: str) -> None:
        pass  # prefixes need no creating; a missing bucket fails at the first upload

    def upload(self, path: str, size: int, chunks: list[tuple[int, Any]], done: Any, *,
               create: bool = False) -> None:
        """One object of ``size`` bytes from ``(offset, buffer)`` chunks (gaps are
        zeros): a single PUT when small, else parallel multipart parts.

        The object appears whole or not at all (S3 makes a PUT and the completion
        of a multipart upload atomic). ``create``: only if nothing is at ``path``
        (``FileExistsError`` otherwise), else it replaces what is there.
        """
        transfer.upload(self.fs, path, size, chunks, done, create)

    def begin_step(self, root: str, name: str) -> StepWriter:
        return FsspecStepWriter(self, root, name)

    def attach_step(self, location: str, final: str) -> StepWriter:
        root, name = location.rsplit("/", 1)  # the final prefix: there is no rename
        return FsspecStepWriter(self, root, name)

    def put_file(self, location: str, size: int, chunks: list[tuple[int, Any]],
                 progress: bool | None = None) -> None:
        # one PUT, or one multipart upload completed at the end: atomic on S3
        with progress_bar(size, f"uploading {location.rsplit('/', 1)[-1]}", progress) as bar:
            self.upload(self.path(location), size, chunks, bar.update)

    def remove_leftovers(self, root: str) -> list[str]:
        _, partial = self._scan(root)
        removed = []
        for step, names in partial.items():
            self._remove_objects(names)
            removed.append(fsutil.step_dir_name(step))
        removed += self._abort_unfinished_uploads(root)
        if removed:
            log.info("removed leftovers of an interrupted writer in %s: %s", root, removed)
        return removed

    def _abort_unfinished_uploads(self, root: str) -> list[str]:
        """Abort the multipart uploads a dead writer left under ``root``'s steps
        (invisible, but S3 keeps and bills their parts until they are aborted)."""
        if not hasattr(self.fs, "call_s3"):
            return []
        bucket, prefix, _ = self.fs.split_path(self.path(root))
        prefix = f"{prefix}/" if prefix else ""
        aborted = []
        listing = {"Bucket": bucket, "Prefix": prefix}
        while True:
            try:
                page = self.fs.call_s3("list_multipart_uploads", **listing)
            except OSError as error:
                if error.errno != errno.ENOSYS:
                    raise
                # a server without ListMultipartUploads (some S3 emulators): what a
                # killed writer's upload left is the server's to expire
                log.debug("%s cannot list multipart uploads: %s", bucket, error)
                return aborted
            for upload in page.get("Uploads", []):
                top = upload["Key"][len(prefix):].split("/", 1)[0]
                if fsutil.parse_step_dir(top) is None:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    self.fs.call_s3("abort_multipart_upload", Bucket=bucket,
                                    Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.append(f"{upload['Key']} (unfinished upload)")
            if not page.get("IsTruncated"):
                return aborted
            listing.update(KeyMarker=page["NextKeyMarker"],
                           UploadIdMarker=page["NextUploadIdMarker"])

    def _remove_objects(self, paths: list[str]) -> None:
        """Delete ``paths``: one bulk request, or one per object on a server that
        has no DeleteObjects (s3fs reports NotImplemented as ENOSYS)."""
        try:
            self.fs.rm(paths)
        except OSError as error:
            if error.errno != errno.ENOSYS:
                raise
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)

    def remove_step(self, location: str) -> None:
        # the manifest first: from then on no reader lists the step
        manifest = self.path(f"{location}/{MANIFEST_NAME}")
        self.fs.rm_file(manifest)
        with self._mutex:
            self._listed.pop(manifest, None)
        _failpoints.hit("prune.after_manifest_removed")
        rest = list(self._objects(location))
        if rest:
            self._remove_objects(rest)

    def set_aside(self, location: str, new_name: str) -> str:
        parent = location.rsplit("/", 1)[0]
        target = f"{parent}/{new_name}"
        source = self.path(location)
        objects = self._objects(location)
        for name in objects:  # copy everything, manifest last: the copy is complete first
            if not name.endswith("/" + MANIFEST_NAME):
                self.fs.copy(name, self.path(target) + name[len(source):])
        for name in objects:
            if name.endswith("/" + MANIFEST_NAME):
                self.fs.copy(name, self.path(target) + name[len(source):])
        self.remove_step(location)
        return target

    # ------------------------------------------------------------ lease

    @contextlib.contextmanager
    def writer_lock(self, root: str, timeout: float | None) -> Iterator[None]:
        lease = self.path(f"{root}/{LEASE_NAME}")
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex}
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._try_lease(lease, owner):
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeoutError(self.url(lease), timeout)
            time.sleep(0.2)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lease, owner, stop), daemon=True,
                                name="ckpt-lease")
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            with contextlib.suppress(OSError):
                if self._holder(lease).get("id") == owner["id"]:
                    self.fs.rm_file(lease)

    def _lease_body(self, owner: dict) -> bytes:
        return json.dumps({**owner, "expires": time.time() + LEASE_SECONDS}).encode()

    def _try_lease(self, lease: str, owner: dict) -> bool:
        try:
            self.fs.pipe_file(lease, self._lease_body(owner), mode="create")
            return True
        except FileExistsError:
            pass
        holder = self._holder(lease)
        if holder and not _stale(holder):
            return False
        # its holder is gone: take it over (see the module docstring on atomicity)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(lease)
        try:
            self.fs.pipe_file(lease, self._lease_body(owner), mode="create")
            return True
        except FileExistsError:
            return False

    def _holder(self, lease: str) -> dict:
        try:
            data = self.fs.cat_file(lease)
        except FileNotFoundError:
            return {}
        try:
            holder = json.loads(data)
        except ValueError:
            return {"expires": 0}  # unreadable: a torn write of a dead writer
        return holder if isinstance(holder, dict) else {"expires": 0}

    def _heartbeat(self, lease: str, owner: dict, stop: threading.Event) -> None:
        while not stop.wait(LEASE_SECONDS / 3):
            with contextlib.suppress(OSError):
                self.fs.pipe_file(lease, self._lease_body(owner))


def _stale(holder: dict) -> bool:
    """Whether a lease's holder is gone: its heartbeat stopped, or it was a process
    on this host that no longer exists."""
    expires = holder.get("expires")
    if not isinstance(expires, (int, float)) or expires < time.time():
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False
