"""The HDF5 state file: layout by h5py, bytes by plain POSIX I/O.

How a file is written, and why:

1. h5py lays the file out in memory (:class:`_SparseFile`): groups mirroring the
   tree, one contiguous, early-allocated, never-filled dataset per large leaf, a few
   ``/.ckpt/pack<i>`` datasets holding every small leaf back to back, and
   ``/.ckpt/index`` (JSON). Only HDF5's few KiB of metadata exist at this point.
2. The real file is then written with ``os.pwrite`` from the arrays' own memory
   (no second copy of the state), after ``posix_fallocate`` has reserved its full
   size. A full disk is therefore an ordinary ``OSError`` raised before any array
   bytes move, and h5py never writes to a real disk: some of its write-error paths
   can crash the interpreter.
3. The first 512 bytes are an HDF5 *user block* (ignored by HDF5 tools) holding a
   small header that points at the index, so ckpt reads its own files with
   ``os.preadv`` straight into fresh arrays at raw-read speed, without h5py.

Small leaves are packed because one HDF5 dataset per leaf costs ~90 us; 10,000 of
them took 0.86 s to write, one packed buffer 15 ms. Every large leaf and every pack
has an xxh3-64 checksum in the index.

The result is a plain HDF5 file: ``h5ls``/``h5py`` show large arrays at their key
paths (keys escaped: ``%`` -> ``%25``, ``/`` -> ``%2F``, a leading ``.`` -> ``%2E``,
an empty key -> ``%``).
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import re
import stat
import sys
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np
import xxhash

from ckpt import _failpoints
from ckpt._progress import progress_bar
from ckpt._types import KeyPath
from ckpt.errors import CorruptCheckpointError, StateMismatchError
from ckpt.index import FORMAT, USERBLOCK, VERSION, validate_index
from ckpt.tree import decode_tree, keystr, leaf_paths, select

__all__ = [
    "FORMAT",
    "VERSION",
    "Leaf",
    "checksum",
    "write_state",
    "read_header_index",
    "read_leaves",
    "read_tree",
    "raise_missing_keys",
    "validate_index",
    "is_ckpt_file",
    "open_regular",
    "h5_name",
]

MAGIC = b"CKPT-HDF5\x00"
PACK_THRESHOLD = 64 * 1024  # leaves smaller than this go into a pack
PACK_LIMIT = 64 * 1024 * 1024  # a pack holds at most this many bytes
PACK_ALIGN = 16
IO_CHUNK = 64 * 1024 * 1024  # progress and pwrite granularity

Leaf = tuple[KeyPath, str, np.ndarray, dict]  # (path, kind, contiguous array, extra)


def checksum(data: Any) -> str:
    """xxh3-64 of a buffer, as ``"xxh3_64:<hex>"``."""
    return "xxh3_64:" + xxhash.xxh3_64_hexdigest(data)


def _bytes_view(array: np.ndarray) -> np.ndarray:
    """The array's own memory as flat uint8 (no copy; the array is C-contiguous)."""
    return array.reshape(-1).view(np.uint8)


# ----------------------------------------------------------------- names


def _escape(key: str) -> str:
    if key == "":
        return "%"
    out = key.replace("%", "%25").replace("/", "%2F").replace("\x00", "%00")
    return "%2E" + out[1:] if out.startswith(".") else out


def h5_name(path: KeyPath, int_key_clash: bool = False) -> str:
    """The HDF5 path of a large leaf: its key path, each key escaped."""
    parts = []
    for key in path:
        parts.append(("%i" if int_key_clash else "") + str(key) if type(key) is int
                     else _escape(key))
    return "/" + "/".join(parts)


def _dataset_names(paths: Sequence[KeyPath]) -> list[str]:
    # A dict may hold both 0 and "0": int keys then get a "%i" prefix (a str key
    # can never escape to a name starting with "%i").
    names, seen = [], set()
    for path in paths:
        name = h5_name(path)
        if name in seen:
            name = h5_name(path, int_key_clash=True)
        seen.add(name)
        names.append(name)
    return names


# ---------------------------------------------------------------- layout


class _SparseFile:
    """A file object for h5py that keeps only the extents HDF5 writes (metadata).

    Datasets are allocated early and never filled, so their space is never written
    here: a 1 GiB layout costs a few KiB of memory.
    """

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []  # in write order: later ones win
        self.pos = 0
        self.size = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = base + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.writes.append((self.pos, data))
        self.pos += len(data)
        self.size = max(self.size, self.pos)
        return len(data)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self.size - self.pos))
        view[:count] = bytes(count)
        for offset, data in self.writes:
            lo, hi = max(offset, self.pos), min(offset + len(data), self.pos + count)
            if lo < hi:
                view[lo - self.pos:hi - self.pos] = data[lo - offset:hi - offset]
        self.pos += count
        return count

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(self.size - self.pos if size < 0 else size)
        return bytes(buffer[: self.readinto(buffer)])

    def truncate(self, size: int | None = None) -> int:
        self.size = self.pos if size is None else size
        return self.size

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True


def _h5_type(dtype: np.dtype) -> tuple[Any, bool]:
    """The HDF5 type for ``dtype``, or raw bytes when HDF5 has no equivalent."""
    try:
        return h5py.h5t.py_create(dtype, logical=True), False
    except (TypeError, ValueError):
        return h5py.h5t.py_create(np.dtype(np.uint8)), True


def _create_empty(file: h5py.File, name: str, tid: Any, shape: tuple[int, ...]) -> int:
    parent, _, base = name.rpartition("/")
    group = file.require_group(parent) if parent else file
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(shape) if shape else h5py.h5s.create(h5py.h5s.SCALAR)
    dataset = h5py.h5d.create(group.id, base.encode("utf-8", "surrogatepass"), tid, space,
                              dcpl=dcpl)
    return dataset.get_offset()


# ----------------------------------------------------------------- write


def _plan(leaves: Sequence[Leaf]) -> tuple[list[dict], list[dict], list[list[int]]]:
    """Index entries for each leaf, the packs, and which leaves go in which pack."""
    entries, packs, members = [], [], []
    size = 0
    for number, (path, kind, array, extra) in enumerate(leaves):
        entry: dict[str, Any] = {
            "path": list(path), "kind": kind, "dtype": array.dtype.str,
            "shape": list(array.shape), "nbytes": int(array.nbytes),
        }
        if extra:
            entry["extra"] = extra
        if "alias" in extra:
            # bytes another leaf already holds (tied tensors): stored once, with that leaf
            entry["alias"] = extra["alias"]
            entry["extra"] = {k: v for k, v in extra.items() if k != "alias"}
        elif array.nbytes < PACK_THRESHOLD:
            aligned = -size % PACK_ALIGN
            if not packs or size + aligned + array.nbytes > PACK_LIMIT:
                packs.append({"nbytes": 0})
                members.append([])
                size, aligned = 0, 0
            entry["pack"] = len(packs) - 1
            entry["pack_offset"] = size + aligned
            size += aligned + array.nbytes
            packs[-1]["nbytes"] = size
            members[-1].append(number)
        entries.append(entry)
    return entries, packs, members


def write_state(
    path: str | os.PathLike[str],
    treedef: Any,
    leaves: Sequence[Leaf],
    *,
    metadata: Any = None,
    progress: bool | None = None,
) -> dict:
    """Write a state file at ``path`` (created exclusively) and fsync it.

    Returns the index: tree, one entry per leaf with its offset and checksum, the
    packs, plus (not stored in the index itself) the file's size ``file_nbytes``
    and the index's checksum ``index_checksum``. On any error the partial file is
    removed.
    """
    entries, packs, members = _plan(leaves)
    pack_buffers = []
    for pack, numbers in zip(packs, members):
        buffer = np.zeros(pack["nbytes"], dtype=np.uint8)
        for number in numbers:
            start = entries[number]["pack_offset"]
            view = _bytes_view(leaves[number][2])
            buffer[start:start + view.size] = view
        pack["checksum"] = checksum(buffer)
        pack_buffers.append(buffer)
    big = [n for n, e in enumerate(entries) if "pack" not in e and "alias" not in e]
    for number in big:
        entries[number]["checksum"] = checksum(_bytes_view(leaves[number][2]))

    index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "tree": treedef,
                             "leaves": entries, "packs": packs, "metadata": metadata}
    layout = _SparseFile()
    with h5py.File(layout, "w", userblock_size=USERBLOCK, track_order=True,
                   alignment_threshold=PACK_THRESHOLD, alignment_interval=4096) as file:
        names = _dataset_names([leaves[n][0] for n in big])
        for number, name in zip(big, names):
            array = leaves[number][2]
            tid, raw = _h5_type(array.dtype)
            shape = (array.nbytes,) if raw else array.shape
            entries[number]["offset"] = _create_empty(file, name, tid, shape)
            entries[number]["h5"] = name
        u8 = h5py.h5t.py_create(np.dtype(np.uint8))
        for number, pack in enumerate(packs):
            pack["h5"] = f"/.ckpt/pack{number}"
            # HDF5 gives an empty dataset no address: nothing to read there anyway
            pack["offset"] = (_create_empty(file, pack["h5"], u8, (pack["nbytes"],))
                              if pack["nbytes"] else USERBLOCK)
        index_bytes = json.dumps(index, separators=(",", ":"), allow_nan=False).encode()
        index_offset = _create_empty(file, "/.ckpt/index", u8, (len(index_bytes),))
    index_checksum = checksum(index_bytes)
    header = MAGIC + json.dumps({
        "version": VERSION, "index_offset": index_offset, "index_nbytes": len(index_bytes),
        "index_checksum": index_checksum,
    }).encode()
    # not part of the stored index: what a manifest records to authenticate this file
    index["file_nbytes"] = layout.size
    index["index_checksum"] = index_checksum

    chunks: list[tuple[int, Any]] = [(0, header.ljust(USERBLOCK, b" "))]
    chunks += [(o, d) for o, d in layout.writes if o >= USERBLOCK]
    chunks += [(entries[n]["offset"], _bytes_view(leaves[n][2])) for n in big]
    chunks += [(p["offset"], b) for p, b in zip(packs, pack_buffers)]
    chunks.append((index_offset, index_bytes))
    _write_chunks(os.fspath(path), layout.size, chunks, progress)
    return index


def _write_chunks(path: str, size: int, chunks: list[tuple[int, Any]],
                  progress: bool | None) -> None:
    total = sum(len(memoryview(data)) for _, data in chunks)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _reserve(fd, size)
        _failpoints.hit("data.before_write")
        with progress_bar(total, f"saving {os.path.basename(path)}", progress) as bar:
            for offset, data in chunks:
                view = memoryview(data).cast("B")
                for start in range(0, len(view), IO_CHUNK):
                    part = view[start:start + IO_CHUNK]
                    _pwrite_all(fd, part, offset + start)
                    bar.update(len(part))
        _failpoints.hit("data.after_write")
        os.fsync(fd)
        _failpoints.hit("data.after_fsync")
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def _reserve(fd: int, size: int) -> None:
    """Reserve the file's blocks so that a full disk fails here, before any data."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


# ------------------------------------------------------------------ read


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of ``path``, which must be a regular file.

    A FIFO in its place would block an ordinary open for ever and a device never
    end: those raise :class:`CorruptCheckpointError`, as does a failing open
    (a symlink loop, no permission). ``FileNotFoundError`` passes through.
    """
    path = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore it)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise CorruptCheckpointError(path, f"cannot open ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptCheckpointError(path, "not a regular file")
    return fd


def is_ckpt_file(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with ckpt's header (else: plain HDF5 or other)."""
    with open(open_regular(path), "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def read_header_index(path: str | os.PathLike[str], *,
                      expected_checksum: str | None = None) -> dict:
    """Read and check the index a ckpt file's header points at.

    With ``expected_checksum`` (a manifest's record of the index) the index must
    have that checksum too, not only the one the file's own header claims.
    """
    path = os.fspath(path)
    with open(open_regular(path), "rb") as handle:
        head = _read_or_fail(handle, USERBLOCK, path)
        size = os.fstat(handle.fileno()).st_size
        if not head.startswith(MAGIC):
            raise CorruptCheckpointError(path, "not a ckpt state file (no ckpt header)")
        try:
            header = json.loads(head[len(MAGIC):].decode().rstrip())
            offset, nbytes = header["index_offset"], header["index_nbytes"]
            expected = header["index_checksum"]
        except (ValueError, KeyError, TypeError, IndexError, RecursionError) as error:
            raise CorruptCheckpointError(path, f"unreadable header ({type(error).__name__}: "
                                         f"{str(error)[:200]})") from None
        if type(offset) is not int or type(nbytes) is not int or type(expected) is not str:
            raise CorruptCheckpointError(path, "unreadable header (index_offset and "
                                         "index_nbytes must be integers, index_checksum a str)")
        if not (USERBLOCK <= offset and 0 <= nbytes and offset + nbytes <= size):
            raise CorruptCheckpointError(
                path, f"index at {offset}+{nbytes} lies outside the file ({size} bytes)")
        handle.seek(offset)
        data = _read_or_fail(handle, nbytes, path)
    actual = checksum(data)
    if actual != expected:
        raise CorruptCheckpointError(path, "index checksum mismatch (the file's header says "
                                     f"{expected[:40]}, the index is {actual})",
                                     key="/.ckpt/index")
    if expected_checksum is not None and actual != expected_checksum:
        raise CorruptCheckpointError(path, "index checksum mismatch (the manifest says "
                                     f"{expected_checksum[:40]}, the index is {actual})",
                                     key="/.ckpt/index")
    index = parse_json(data, path)
    validate_index(index, path, size)
    return index


def _read_or_fail(handle: Any, nbytes: int, path: str) -> bytes:
    try:
        return handle.read(nbytes)
    except OSError as error:  # EIO from a bad sector
        raise CorruptCheckpointError(path, f"cannot read ({error.strerror})") from None


def parse_json(data: bytes, path: str) -> Any:
    """``json.loads`` whose every failure is a :class:`CorruptCheckpointError`."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise CorruptCheckpointError(path, f"invalid JSON ({type(error).__name__})") from None


def read_leaves(
    path: str | os.PathLike[str],
    index: dict,
    wanted: set[int] | None = None,
    *,
    verify: bool = True,
    progress: bool | None = None,
    into: dict[int, np.ndarray] | None = None,
) -> dict[int, Any]:
    """Read leaves (all, or the numbers in ``wanted``) as encoded arrays.

    Returns ``{leaf number: array}``. ``into`` maps leaf numbers to C-contiguous
    arrays of the leaf's dtype and shape that the bytes are read straight into
    (a template's own memory; the returned array is then that array). Checksums
    are verified unless ``verify`` is false; a mismatch raises
    :class:`CorruptCheckpointError` naming the key, and leaves the ``into`` arrays
    read so far overwritten.
    """
    path = os.fspath(path)
    entries = index["leaves"]
    into = into or {}
    numbers = range(len(entries)) if wanted is None else sorted(wanted)
    # an alias leaf (a tied tensor) is a view of another leaf's bytes: read that one
    bases = {entries[n]["alias"]["of"] for n in numbers if "alias" in entries[n]}
    stored = sorted({n for n in numbers if "alias" not in entries[n]} | bases)
    big = [n for n in stored if "pack" not in entries[n]]
    packs_needed = sorted({entries[n]["pack"] for n in stored if "pack" in entries[n]})
    total = sum(entries[n]["nbytes"] for n in big)
    total += sum(index["packs"][p]["nbytes"] for p in packs_needed)
    out: dict[int, Any] = {}
    fd = open_regular(path)
    try:
        if os.fstat(fd).st_size < index.get("file_nbytes", 0):
            raise CorruptCheckpointError(
                path, f"file is truncated: {os.fstat(fd).st_size} bytes, "
                f"expected {index['file_nbytes']}")
        with progress_bar(total, f"restoring {os.path.basename(path)}", progress) as bar:
            pack_data = {}
            for number in packs_needed:
                pack = index["packs"][number]
                buffer = np.empty(pack["nbytes"], dtype=np.uint8)
                _pread_all(fd, buffer, pack["offset"], path, pack["h5"])
                if verify and checksum(buffer) != pack["checksum"]:
                    keys = [keystr(entries[n]["path"]) for n in stored
                            if entries[n].get("pack") == number]
                    raise CorruptCheckpointError(
                        path, f"checksum mismatch in packed small leaves {pack['h5']} "
                        f"(holding {_few(keys)})", key=keys[0] if keys else pack["h5"])
                pack_data[number] = buffer
                bar.update(buffer.size)
            for n in stored:
                out[n] = _read_leaf(fd, entries[n], pack_data, into.get(n), path, verify, bar)
    finally:
        os.close(fd)
    for n in numbers:
        if "alias" in entries[n]:
            out[n] = _alias_view(entries[n], out[entries[n]["alias"]["of"]])
    return out


def _read_leaf(fd: int, entry: dict, pack_data: dict, target: np.ndarray | None,
               path: str, verify: bool, bar: Any) -> np.ndarray:
    """One stored leaf, read into ``target`` when given (else into fresh memory)."""
    dtype = np.dtype(entry["dtype"])
    array = target if target is not None else fresh_array(entry["shape"], dtype)
    if "pack" in entry:
        start = entry["pack_offset"]
        raw = pack_data[entry["pack"]][start:start + entry["nbytes"]]
        _bytes_view(array)[:] = raw
    else:
        _pread_all(fd, _bytes_view(array), entry["offset"], path, keystr(entry["path"]), bar)
        if verify and checksum(_bytes_view(array)) != entry["checksum"]:
            raise CorruptCheckpointError(path, "checksum mismatch", key=keystr(entry["path"]))
    _check_content(entry, array, path)
    return array


FRESH_MMAP_THRESHOLD = 1024 * 1024


def fresh_array(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """An uninitialized array; large ones in their own anonymous mapping.

    Why: memory from malloc (numpy's allocator) is first touched 2-6x slower on
    lazily backed VMs than a fresh anonymous mapping, which the kernel aligns for
    huge pages: reading 1.4 GiB into malloc'd arrays took 1.7-5.5 s here, into
    mappings 0.7-0.9 s. The array owns the mapping; it is unmapped with the array.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < FRESH_MMAP_THRESHOLD:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)


def _alias_view(entry: dict, base: np.ndarray) -> np.ndarray:
    """The values of an alias leaf: a read-only strided view of its base leaf's bytes."""
    alias = entry["alias"]
    view = np.ndarray(tuple(entry["shape"]), dtype=np.dtype(entry["dtype"]),
                      buffer=_bytes_view(base), offset=alias["offset"],
                      strides=tuple(alias["strides"]))
    view.flags.writeable = False
    return view


_BIGINT = re.compile(rb"-?[0-9]+")


def _check_content(entry: dict, array: np.ndarray, path: str) -> None:
    """Refuse bytes that the leaf's kind cannot decode (checksums cannot tell: a damaged
    index may point a leaf at other, intact bytes; ``verify=False`` checks nothing)."""
    kind, problem = entry["kind"], None
    if kind == "bigint":
        data = array.tobytes()
        limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()
        if not _BIGINT.fullmatch(data) or (limit and len(data.lstrip(b"-")) > limit):
            problem = "a big int leaf does not hold decimal digits"
    elif kind == "str":
        try:
            array.tobytes().decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            problem = "a str leaf does not hold UTF-8"
    elif array.dtype.kind == "U" and array.size:
        # numpy cannot build a str from a code point past U+10FFFF
        codes = np.frombuffer(array.tobytes(), dtype=array.dtype.byteorder.replace("|", "=")
                              + "u4")
        if int(codes.max()) > 0x10FFFF:
            problem = "a unicode array holds code points past U+10FFFF"
    if problem:
        raise CorruptCheckpointError(path, problem, key=keystr(entry["path"]))


def raise_missing_keys(path: str, missing: list) -> None:
    """One ``StateMismatchError`` for every ``keys=`` path that names nothing."""
    if missing:
        raise StateMismatchError(path, [(keystr(p), "missing", "requested by keys=",
                                         "nothing in the checkpoint") for p in missing])


def read_tree(path: str, index: dict, *, keys: Any = None, verify: bool = True,
              device: Any = None, progress: bool | None = None) -> Any:
    """The tree in ``path`` (all of it, or the subtrees ``keys`` names), rebuilt.

    Only the selected leaves are read; a key that names nothing raises one
    ``StateMismatchError`` listing every such key.
    """
    treedef, wanted = index["tree"], None
    if keys is not None:
        treedef, missing = select(treedef, keys)
        raise_missing_keys(path, missing)
        wanted = {number for _, number in leaf_paths(treedef)}
    arrays = read_leaves(path, index, wanted, verify=verify, progress=progress)
    return decode_tree(treedef, index["leaves"], arrays, device, path)


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _pread_all(fd: int, buffer: np.ndarray, offset: int, path: str, key: str,
               bar: Any = None) -> None:
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        try:
            count = os.preadv(fd, [view[done:done + IO_CHUNK]], offset + done)
        except OSError as error:  # EIO from a bad sector
            raise CorruptCheckpointError(path, f"cannot read ({error.strerror})",
                                         key=key) from None
        if count == 0:
            raise CorruptCheckpointError(path, "file ends before this leaf's data", key=key)
        done += count
        if bar is not None:
            bar.update(count)
