"""The listing cache of a local checkpoint directory: every manifest's gist in one file.

Listing 10,000 checkpoints meant reading and checking 10,000 manifests (585 ms for a
fresh manager, 1.6 s for ``ckpt ls``: issue 15). Writers therefore leave
``DIR/.ckpt-listing`` behind: per valid checkpoint, the signature of its manifest
(inode, size, mtime, ctime) and what :class:`~ckpt.policies.StepInfo` holds. It is
only a cache, the manifests stay the truth:

* a record is used only while a fresh stat of the manifest matches its signature
  (the rule the manager's in-process cache always had; ctime because no program
  can set it back): a manifest replaced, rewritten, truncated or removed, a step
  deleted and saved again, all miss and are read from the manifest;
* a writer, under the lock, removes the file before it deletes or sets aside any
  step and writes a new one (a new generation) when it is done, so a writer killed
  in between leaves no file, and no record outlives the step it was written for;
* the file is written under a temporary name and renamed over (never a torn file);
  a checksum catches what a crash of the machine may leave; anything unreadable is
  ignored. Readers never create it.

A stat per step is what a listing costs then (about 3 us), instead of an open, a
read and a JSON parse. Object stores have no inodes or atomic rename: the manager
reads their manifests as before.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterable

import numpy as np
import xxhash

from ckpt import _failpoints, fsutil
from ckpt.policies import StepInfo

__all__ = ["LISTING_NAME", "Listing", "file_signature"]

log = logging.getLogger("ckpt")

LISTING_NAME = ".ckpt-listing"
_MAGIC = b"ckpt-listing 2 "  # version 1 (JSON columns) is ignored, rewritten by a writer
_HEADER_MAX = 128
# a record's step and manifest signature (inode, size, mtime, ctime), then where its
# details end: binary columns, little-endian, 3 ms less than JSON to parse for 10,000
# steps, and one record's details are found without splitting the others'
_COLUMNS = ("<i8", "<u8", "<i8", "<i8", "<i8")
_ENDS = "<u8"
# metadata is the user's and may be megabytes: such steps are read from their manifest
_MAX_CACHED_METADATA = 1024
# steps a cache file may lack before a writer rewrites it (each costs a reader one
# manifest read, about 35 us; rewriting 10,000 records costs a writer about 10 ms,
# and checking them first, where it has not, a stat each: 30-70 ms)
_MAX_UNCACHED = 64


def file_signature(path: str) -> tuple | None:
    """What changes when the file at ``path`` is replaced or rewritten; None if missing.

    ctime is in it because no program can set it back (``touch -d`` sets mtime).
    """
    try:
        info = os.stat(path)
    except OSError:  # missing, or a symlink loop, no permission
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _settled(signature: tuple, checked_at: int) -> bool:
    """Whether a change to the manifest after ``checked_at`` must show in its
    signature: its ctime is older than that by more than a timestamp tick.

    A file changed in place within the tick of its last change keeps its signature
    (git's "racy" index entries), so a manifest that young is not recorded: a
    writer's newest step is read from its manifest until the next cache rewrite.
    Ticks are a few ms where times have nanoseconds; whole seconds (FAT, ext3's small
    inodes, some NFS servers) may mean 1-2 s ticks.
    """
    changed = signature[3]
    tick = 2_000_000_000 if changed % 1_000_000_000 == 0 else 50_000_000
    return changed < checked_at - tick


def _encoded(columns: list[np.ndarray], details: list[bytes]) -> bytes:
    """A cache file's body: the records' columns, where each one's details end, the
    details."""
    ends = np.cumsum([len(line) for line in details], dtype=_ENDS)
    return b"".join([*(np.ascontiguousarray(column, dtype).tobytes()
                       for column, dtype in zip(columns, _COLUMNS)), ends.tobytes(), *details])


class Listing:
    """The step directories of ``root`` and the records of its cache file; one per
    manager.

    The file holds a header line (magic, generation, record count, checksum), then
    per record, as binary columns of 64-bit integers: the step (ascending), its
    manifest's signature (four columns: enough to say which steps are valid) and
    where its details end; then the details (time, size, metrics, metadata as JSON),
    each parsed only when a caller asks for that step's info.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.path = os.path.join(root, LISTING_NAME)
        self._header = b""  # of the file the records below came from; b"" if none
        self._unread = False  # a writer's file is read when first needed (see begin_write)
        self._body = b""
        self._count = 0
        # the records, parsed from _body when needed: columns (steps ascending, then
        # the four signature fields), {step: signature} built from them when needed
        # (a writer's bookkeeping), the detail ends, the steps forget() dropped since
        self._cols: list[list[int]] | None = [[] for _ in _COLUMNS]
        self._sigs: dict[int, tuple] | None = {}
        self._ends: np.ndarray | None = None
        self._forgotten: set[int] = set()
        self._details: dict[int, StepInfo] = {}
        self._read_here: dict[int, tuple[tuple, StepInfo]] = {}  # for write()
        self._pinned = False
        self._invalidated = False
        self._confirmed: set[int] = set()  # vouched for during this write
        self._dir_fd: int | None = None  # of the last scan
        self._names: dict[int, str] = {}  # step directory names, of the last scan
        self._names_current = False  # a writer's own removals are all that changed them
        self._listed_in_write = False  # whether this write has listed the directory
        from ckpt.manifest import MANIFEST_NAME  # the format's name, not storage's

        self._manifest = MANIFEST_NAME

    # ---------------------------------------------------------- readers

    def probe(self) -> dict[int, str]:
        """Raise what listing ``root`` would raise (missing, not a directory, no
        permission) without reading it; ``{}``."""
        with os.scandir(self.root):
            return {}

    def scan(self) -> dict[int, str]:
        """``{step: path}`` of every ``step_<N>`` directory, sorted by step; the cache
        file is read again if a writer replaced it."""
        return fsutil.in_step_order(self.scan_names(), os.path.join(self.root, ""))

    def scan_names(self) -> dict[int, str]:
        """:meth:`scan`, as ``{step: name}`` in no order (no paths to build)."""
        # manifests are stat'ed relative to a descriptor of the directory: a path
        # walk of two names instead of the whole path, 30% faster for 10,000 steps
        if self._names_current:  # see removed()
            return dict(self._names)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            names = fsutil.step_names(fd)
        except BaseException:
            os.close(fd)
            raise
        self._close_dir()
        self._dir_fd, self._names = fd, names
        self._listed_in_write = self._pinned
        if not self._pinned:
            self._refresh()
        return names

    def vouches(self, step: int, step_dir: str) -> bool:
        """Whether the cache file says ``step`` is a valid checkpoint, and its
        manifest is still the one the record was made from."""
        signature = self._record(step)
        if signature is None:
            return False
        try:
            info = os.stat(f"{fsutil.STEP_PREFIX}{step}/{self._manifest}", dir_fd=self._dir_fd)
        except OSError:
            return False
        return signature == (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._close_dir()

    def vouched(self, steps: Iterable[int]) -> set[int]:
        """Those of ``steps`` (of the last scan) that :meth:`vouches` for, in one loop:
        this is most of what listing 10,000 checkpoints costs (the stats, 25-30 ms;
        the loop is kept to them and four compares)."""
        names, fd, stat = self._names, self._dir_fd, os.stat
        tail = f"/{self._manifest}"
        asked = wanted = set(steps)
        # a writer (pinned, under the lock) changes only what it knows: a step it
        # checked once in this write need not be stat'ed again when it lists again
        confirmed = self._confirmed if self._pinned else set()
        if confirmed or self._forgotten:
            wanted = wanted - confirmed - self._forgotten
        columns = self._columns
        if len(wanted) * 16 < len(columns[0]):  # a few of many (3 kept of 10,000)
            records = [(step, *signature) for step in sorted(wanted)
                       if (signature := self._record(step)) is not None]
        else:
            records = zip(*columns)
        out = []
        for step, inode, size, mtime, ctime in records:
            if step not in wanted:
                continue
            name = names.get(step)
            if name is None:
                continue
            try:
                info = stat(name + tail, dir_fd=fd)
            except OSError:
                continue
            if (info.st_ctime_ns == ctime and info.st_mtime_ns == mtime
                    and info.st_ino == inode and info.st_size == size):
                out.append(step)
        found = set(out)
        if self._pinned:
            found |= asked & confirmed
            self._confirmed |= found
        return found

    def info_of(self, step: int) -> StepInfo | None:
        """The recorded info of a step :meth:`vouched` for (None if the file's details
        turn out not to be readable: the caller reads the manifest)."""
        return self._detail(step)

    def lookup(self, step: int, step_dir: str) -> StepInfo | None:
        """The info of ``step`` if the cache file's record still describes it."""
        return self._detail(step) if self.vouches(step, step_dir) else None

    def remember(self, step: int, signature: tuple | None, info: StepInfo,
                 checked_at: int) -> None:
        """What a manifest with ``signature`` (stat'ed at ``checked_at``, in ns since
        the epoch, or after; then read and checked) says, for the next :meth:`write`."""
        if signature is None or len(signature) != 4 or not _settled(signature, checked_at):
            return
        if info.metadata is not None and len(json.dumps(info.metadata)) > _MAX_CACHED_METADATA:
            return
        self._read_here[step] = (signature, info)

    @property
    def _columns(self) -> list[list[int]]:
        if self._unread:
            self._unread = False
            self._refresh()
        if self._cols is None:
            count, body = self._count, self._body
            self._cols = [np.frombuffer(body, dtype, count, offset=8 * count * i).tolist()
                          for i, dtype in enumerate(_COLUMNS)]
        return self._cols

    @property
    def _signatures(self) -> dict[int, tuple]:
        if self._sigs is None:
            steps, *fields = self._columns
            forgotten = self._forgotten
            self._sigs = {step: signature for step, signature in zip(steps, zip(*fields))
                          if step not in forgotten}
        return self._sigs

    def _position(self, step: int) -> int | None:
        """The index of ``step``'s record in the file (forgotten or not)."""
        steps = self._columns[0]
        position = bisect.bisect_left(steps, step)
        # (a file not sorted by step, which we never write, misses: manifests are read)
        return position if position < len(steps) and steps[position] == step else None

    def _record(self, step: int) -> tuple | None:
        """The recorded signature of ``step``'s manifest, without building
        :attr:`_signatures` (a fresh ``latest_step()`` needs one record)."""
        if self._sigs is not None and not self._unread:
            return self._sigs.get(step)
        position = self._position(step)
        if position is None or step in self._forgotten:
            return None
        return tuple(column[position] for column in self._columns[1:])

    def _detail(self, step: int) -> StepInfo | None:
        # one record's details parsed on demand: a writer that keeps 3 of 10,000 steps
        # reads 3 records, not 10,000 (30 ms)
        found = self._details.get(step)
        if found is not None:
            return found
        position = self._position(step)
        try:
            if position is None:
                raise IndexError(f"no record of step {step}")
            if self._ends is None:
                self._ends = np.frombuffer(self._body, _ENDS, self._count,
                                           offset=8 * len(_COLUMNS) * self._count)
            start = 8 * (len(_COLUMNS) + 1) * self._count
            begin = start + (int(self._ends[position - 1]) if position else 0)
            end = start + int(self._ends[position])
            saved_at, nbytes, metrics, metadata = json.loads(self._body[begin:end])
            found = StepInfo(step=step, time=float(saved_at), metrics=dict(metrics),
                             path=os.path.join(self.root, fsutil.step_dir_name(step)),
                             nbytes=int(nbytes), metadata=metadata)
        except (ValueError, TypeError, IndexError) as error:  # not our format after all
            log.debug("ignoring the listing cache %s: %s", self.path, error)
            self._drop()  # vouch for nothing from now on
            return None
        self._details[step] = found
        return found

    def _drop(self) -> None:
        """No records: the file was unreadable, or was not ours after all."""
        self._header, self._body, self._count = b"", b"", 0
        self._cols, self._sigs, self._ends = [[] for _ in _COLUMNS], {}, None
        self._forgotten, self._details = set(), {}

    def _refresh(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                header = handle.readline(_HEADER_MAX)
                if header != self._header:
                    self._load(header, handle.read())
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            if not isinstance(error, FileNotFoundError):
                log.debug("ignoring the listing cache %s: %s", self.path, error)
            self._drop()

    def _load(self, header: bytes, body: bytes) -> None:
        self._drop()
        if not header.startswith(_MAGIC) or not header.endswith(b"\n"):
            raise ValueError("not a listing cache")
        _generation, count, expected = header[len(_MAGIC):-1].split(b" ")
        if xxhash.xxh3_64_hexdigest(body).encode() != expected:
            raise ValueError("checksum mismatch")
        count = int(count)
        if count < 0 or len(body) < 8 * (len(_COLUMNS) + 1) * count:
            raise ValueError(f"{count} records do not fit in {len(body)} bytes")
        # parsed when first asked: the columns by the first listing, a record's
        # details when its info is asked for
        self._header, self._body, self._count = header, body, count
        self._cols = self._sigs = None

    # ---------------------------------------------------------- writers

    def begin_write(self) -> None:
        """Under the writer lock: the file as it is now is what this writer goes by
        until :meth:`end_write`. Read when first needed: only a writer holding the
        lock replaces it, and a save that needs no record reads none."""
        self._pinned = True
        self._unread = True
        self._names_current = False
        self._listed_in_write = False
        self._read_here = {}
        self._invalidated = False
        self._confirmed = set()

    def invalidate(self) -> None:
        """Under the writer lock, before deleting or setting aside any step."""
        if self._pinned and self._invalidated:
            return  # once per write: pruning 10,000 steps must not unlink 10,000 times
        self._columns  # noqa: B018 - what the file says, read before it is gone
        self._invalidated = self._pinned
        try:
            os.unlink(self.path)
            _failpoints.hit("listing.removed")
        except FileNotFoundError:
            pass
        except OSError as error:
            # The removal that follows needs the same write permission on the
            # directory and fails with an error naming the step. Should it succeed
            # (a sticky directory, a cache file another user owns), the records
            # still vouch only for manifests whose stat matches: stale, not wrong.
            log.debug("could not remove the listing cache %s: %s", self.path, error)

    def stale(self) -> bool:
        """Under the writer lock, at the end: whether the file must be written again.

        After a removal (the file is gone) or when there is none, yes. A file that
        only lacks steps committed since is still true, and readers read those few
        manifests: it is rewritten once more than ``_MAX_UNCACHED`` of the steps the
        writer listed last are not in it, so that a writer next to 10,000 steps it
        keeps does not rewrite 10,000 records on every save.
        """
        self._columns  # noqa: B018 - reads the file if this writer has not yet
        if self._invalidated or not self._header:
            return True
        if not self._listed_in_write:  # a save that pruned nothing (KeepAll) lists here
            try:
                self.scan_names()
            except OSError as error:  # then the cache is not rewritten: speed, not truth
                log.debug("could not list %s: %s", self.root, error)
                return False
        recorded = set(self._columns[0]) - self._forgotten
        return len(self._names.keys() - recorded) > _MAX_UNCACHED

    def forget(self, steps: Iterable[int]) -> None:
        """Drop what is known of steps this writer removes."""
        self._columns  # noqa: B018 - reads the file if this writer has not yet
        steps = set(steps)
        self._forgotten |= steps
        self._confirmed -= steps
        for step in steps:
            self._read_here.pop(step, None)
            if self._sigs is not None:
                self._sigs.pop(step, None)

    def removed(self, steps: Iterable[int]) -> None:
        """Under the writer lock: this writer has removed the directories of ``steps``
        (all of them). The rest of its write lists the names of its last scan less
        these instead of listing the directory again: no writer can add a step
        meanwhile, and an ext4 directory just emptied of 10,000 steps keeps its size,
        so listing it again costs as much as before (0.5 ms of a save next to them)."""
        if not self._pinned:
            return
        steps = set(steps)
        for step in steps:
            self._names.pop(step, None)
        # (names listed before this write began may lack steps committed since)
        self._names_current = self._listed_in_write
        if self._count and not self._unread and 2 * len(steps) >= self._count:
            self._compact()

    def _compact(self) -> None:
        """Keep only the records of steps still listed and not forgotten.

        Part of deleting most of the steps: their records (tens of thousands of
        Python ints, the set of forgotten steps, a megabyte of details for 10,000
        steps) are freed here, with the steps, not by the cache rewrite that ends
        the save (1 ms of a save that prunes 9,998 steps). The records kept are
        those of the file, so what the writer vouches for does not change.
        """
        steps = np.frombuffer(self._body, _COLUMNS[0], self._count)
        present = np.array([step for step in self._names if step < 1 << 63], np.int64)
        kept = [step for step in steps[np.isin(steps, present)].tolist()
                if step not in self._forgotten]
        self._body = _encoded(*self._carry(kept))
        self._count = len(kept)
        self._cols = self._sigs = self._ends = None
        left = set(kept)
        self._details = {step: info for step, info in self._details.items() if step in left}
        self._forgotten = set()  # none of them has a record any more

    def write(self, valid: dict[int, StepInfo | bool]) -> None:
        """Under the writer lock, last: the cache of the valid steps, ``{step: True}``
        for one the cache file vouched for in this write (its record is carried over
        as it is, bytes and all) or ``{step: info}`` for one read from its manifest
        (recorded if :meth:`remember` was told about it), ascending."""
        try:
            carried = [step for step, value in valid.items() if value is True]
            fresh = [(step, *self._read_here[step][0]) for step, value in valid.items()
                     if value is not True and step in self._read_here
                     and self._read_here[step][1] is value and step < 1 << 63]
            columns, details = self._carry(carried)
            if fresh:  # a few records read here, merged in step order
                new = [np.array(values, dtype) for values, dtype in zip(zip(*fresh), _COLUMNS)]
                order = np.argsort(np.concatenate([columns[0], new[0]]), kind="stable")
                columns = [np.concatenate([column, values])[order]
                           for column, values in zip(columns, new)]
                infos = {step: valid[step] for step, *_ in fresh}
                details = [details[i] if i < len(carried) else self._dumped(infos[step])
                           for i, step in zip(order.tolist(), columns[0].tolist())]
            body = _encoded(columns, details)
            header = (_MAGIC + uuid.uuid4().hex.encode() + b" " + str(len(details)).encode()
                      + b" " + xxhash.xxh3_64_hexdigest(body).encode() + b"\n")
            tmp = os.path.join(self.root, fsutil.tmp_name(LISTING_NAME))
            try:
                # no fsync: a cache lost or torn by a crash of the machine is ignored
                with open(tmp, "xb") as handle:
                    handle.write(header + body)
                _failpoints.hit("listing.written")
                os.replace(tmp, self.path)
                _failpoints.hit("listing.after_rename")
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            # what we wrote is what the next scan reads: no need to read it again
            known = {step: info for step, info in self._details.items() if step in carried}
            known.update((step, valid[step]) for step, *_ in fresh)
            self._load(header, body)
            self._details = known
        except (OSError, ValueError, OverflowError) as error:
            # a cache that cannot be written costs speed, not correctness (its
            # temporary file may be left: the next writer scans for leftovers)
            fsutil.mark_unclean(self.root)
            log.debug("could not write the listing cache %s: %s", self.path, error)

    def _carry(self, steps: list[int]) -> tuple[list[np.ndarray], list[bytes]]:
        """The columns and details of the records of ``steps`` (ascending, each in the
        file): sliced out of its bytes, none parsed (rewriting 10,000 records parsed
        and encoded every one again, 220 ms with the listing that fed it)."""
        count, body = self._count, self._body
        old = [np.frombuffer(body, dtype, count, offset=8 * count * i)
               for i, dtype in enumerate(_COLUMNS)]
        wanted = np.array(steps, np.int64)
        positions = np.searchsorted(old[0], wanted)
        if len(wanted) and (positions.max() >= count or (old[0][positions] != wanted).any()):
            raise ValueError("a vouched step has no record")  # never: vouched means recorded
        ends = np.frombuffer(body, _ENDS, count, offset=8 * len(_COLUMNS) * count)
        begins = np.concatenate([np.zeros(1, _ENDS), ends[:-1]])
        start = 8 * (len(_COLUMNS) + 1) * count
        details = [body[begin:end] for begin, end in zip(
            (begins[positions] + start).tolist(), (ends[positions] + start).tolist())]
        return [column[positions] for column in old], details

    @staticmethod
    def _dumped(info: StepInfo) -> bytes:
        return json.dumps([info.time, info.nbytes, info.metrics, info.metadata],
                          separators=(",", ":"), allow_nan=False).encode()

    def end_write(self) -> None:
        """Under the writer lock, in any case after :meth:`begin_write`."""
        self._pinned = False
        self._unread = False
        self._names_current = self._listed_in_write = False
        self._read_here = {}
        self._confirmed = set()
