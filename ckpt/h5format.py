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

import json
import math
import mmap
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np
import xxhash

from ckpt import storage
from ckpt._gcpause import gc_paused
from ckpt._progress import progress_bar
from ckpt._types import KeyPath
from ckpt.errors import CorruptCheckpointError, StateMismatchError
from ckpt.index import FORMAT, SHARDED_VERSION, USERBLOCK, VERSION, pieces_of, validate_index
from ckpt.storage import Reader, local
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
    "open_reader",
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
    # can never escape to a name starting with "%i"). Whichever comes first: when
    # the int key came first, the str key's name clashed with it (a ValueError).
    plain = [h5_name(path) for path in paths]
    counts: dict[str, int] = {}
    for name in plain:
        counts[name] = counts.get(name, 0) + 1
    return [h5_name(path, int_key_clash=True)
            if counts[name] > 1 and any(type(key) is int for key in path) else name
            for path, name in zip(paths, plain)]


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


def _create_link(file: h5py.File, name: str, external: dict) -> None:
    """An HDF5 external link at ``name`` to the dataset another file of the step holds.

    The target file is a bare name: HDF5 looks for it next to this file, so the step
    directory reads with plain h5py from any working directory.
    """
    parent, _, base = name.rpartition("/")
    group = file.require_group(parent) if parent else file
    group[base] = h5py.ExternalLink(external["file"], external["h5"])


# ----------------------------------------------------------------- write


def _plan(leaves: Sequence[Leaf], shared: dict[int, dict]
          ) -> tuple[list[dict], list[dict], list[list[int]]]:
    """Index entries for each leaf, the packs, and which leaves go in which pack.

    A leaf in ``shared`` gets those fields (its ``external`` location) and no bytes.
    """
    entries, packs, members = [], [], []
    size = 0
    dtype_names: dict[np.dtype, str] = {}  # dtype.str builds a new str each call
    for number, (path, kind, array, extra) in enumerate(leaves):
        dtype = array.dtype
        dtype_name = dtype_names.get(dtype)
        if dtype_name is None:
            dtype_name = dtype_names[dtype] = dtype.str
        entry: dict[str, Any] = {
            "path": list(path), "kind": kind, "dtype": dtype_name,
            "shape": list(array.shape), "nbytes": array.nbytes,
        }
        if extra:
            entry["extra"] = extra
        if number in shared:
            entry.update(shared[number])
        elif "alias" in extra:
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
    sink: Any = None,
    external: list[dict] | None = None,
    files: dict | None = None,
    shared: dict[int, dict] | None = None,
    digests: dict[int, str] | None = None,
) -> dict:
    """Write a state file at ``path`` (created exclusively) and fsync it.

    ``sink(size, chunks, progress)``, when given, writes the file's
    ``(offset, buffer)`` chunks instead (a storage backend's ``write_file``).
    ``external`` entries (after those of ``leaves``) are leaves whose bytes other
    files of the step hold, and ``files`` those files' sizes and index checksums:
    the index of a distributed save (``index.SHARDED_VERSION``).

    An incremental save (:mod:`ckpt.incremental`) passes ``shared``: leaf number ->
    the fields of its entry (``external``: ``{file, leaf, h5}``) for a large leaf an
    earlier step's file (listed in ``files``) holds. Such a leaf is not written; h5py
    sees an ``ExternalLink`` at its dataset path instead. ``digests`` adds a
    ``digest`` field to the entries of written leaves (what the next save compares).

    Returns the index: tree, one entry per leaf with its offset and checksum, the
    packs, plus (not stored in the index itself) the file's size ``file_nbytes``
    and the index's checksum ``index_checksum``. On any error the partial file is
    removed.
    """
    shared = shared or {}
    with gc_paused():
        entries, packs, members = _plan(leaves, shared)
    pack_buffers = []
    for pack, numbers in zip(packs, members):
        buffer = np.zeros(pack["nbytes"], dtype=np.uint8)
        for number in numbers:
            start = entries[number]["pack_offset"]
            view = _bytes_view(leaves[number][2])
            buffer[start:start + view.size] = view
        pack["checksum"] = checksum(buffer)
        pack_buffers.append(buffer)
    big = [n for n, e in enumerate(entries)
           if "pack" not in e and "alias" not in e and n not in shared]
    for number in big:
        entries[number]["checksum"] = checksum(_bytes_view(leaves[number][2]))
    for number, digest in (digests or {}).items():
        entries[number]["digest"] = digest

    index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "tree": treedef,
                             "leaves": entries, "packs": packs, "metadata": metadata}
    if files is not None:
        index.update(version=SHARDED_VERSION, files=files)
        entries.extend(external or [])
    layout = _SparseFile()
    with h5py.File(layout, "w", userblock_size=USERBLOCK, track_order=True,
                   alignment_threshold=PACK_THRESHOLD, alignment_interval=4096) as file:
        linked = sorted(shared)
        names = _dataset_names([leaves[n][0] for n in big + linked])
        for number, name in zip(big, names):
            array = leaves[number][2]
            tid, raw = _h5_type(array.dtype)
            shape = (array.nbytes,) if raw else array.shape
            entries[number]["offset"] = _create_empty(file, name, tid, shape)
            entries[number]["h5"] = name
        for number, name in zip(linked, names[len(big):]):
            # metadata only (a link message in its group): no data offset to plan
            _create_link(file, name, entries[number]["external"])
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
    if sink is None:
        local.write_chunks(os.fspath(path), layout.size, chunks, progress)
    else:
        sink(layout.size, chunks, progress)
    return index


# ------------------------------------------------------------------ read


def open_reader(location: str | os.PathLike[str]) -> Reader:
    """A reader of the regular file at ``location`` (a path or URL)."""
    location = os.fspath(location)
    return storage.store_for(location).open(location)


def is_ckpt_file(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with ckpt's header (else: plain HDF5 or other)."""
    with open_reader(path) as reader:
        return _read_or_fail(reader, 0, len(MAGIC), reader.name) == MAGIC


def read_header_index(path: str | os.PathLike[str], *,
                      expected_checksum: str | None = None) -> dict:
    """Read and check the index a ckpt file's header points at.

    With ``expected_checksum`` (a manifest's record of the index) the index must
    have that checksum too, not only the one the file's own header claims.
    """
    path = os.fspath(path)
    with open_reader(path) as reader:
        head = _read_or_fail(reader, 0, USERBLOCK, path)
        size = reader.size
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
        data = _read_or_fail(reader, offset, nbytes, path)
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


def _read_or_fail(reader: Reader, offset: int, nbytes: int, path: str) -> bytes:
    try:
        return reader.read(offset, nbytes)
    except OSError as error:  # EIO from a bad sector, a failing object store
        raise CorruptCheckpointError(path, f"cannot read ({_why(error)})") from None


def _why(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


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
    regions: dict[int, Sequence[int]] | None = None,
) -> dict[int, Any]:
    """Read leaves (all, or the numbers in ``wanted``) as encoded arrays.

    Returns ``{leaf number: array}``. ``into`` maps leaf numbers to C-contiguous
    arrays of the leaf's dtype and shape that the bytes are read straight into
    (a template's own memory; the returned array is then that array). Checksums
    are verified unless ``verify`` is false; a mismatch raises
    :class:`CorruptCheckpointError` naming the key, and leaves the ``into`` arrays
    read so far overwritten.

    ``regions`` maps a leaf number to the offsets of the box of it wanted (a shard
    of a distributed restore): its ``into`` array (required) gets that box only,
    read from the pieces that overlap it.
    """
    path = os.fspath(path)
    entries = index["leaves"]
    into = into or {}
    regions = regions or {}
    numbers = range(len(entries)) if wanted is None else sorted(wanted)
    remote = [n for n in numbers if n in regions or "external" in entries[n]
              or "shards" in entries[n]]
    if remote:
        out = _read_pieces(path, index, remote, into, regions, verify, progress)
        rest = set(numbers) - set(remote)
        if rest:
            out.update(read_leaves(path, index, rest, verify=verify, progress=progress,
                                   into=into))
        return out
    # an alias leaf (a tied tensor) is a view of another leaf's bytes: read that one
    bases = {entries[n]["alias"]["of"] for n in numbers if "alias" in entries[n]}
    stored = sorted({n for n in numbers if "alias" not in entries[n]} | bases)
    big = [n for n in stored if "pack" not in entries[n]]
    packs_needed = sorted({entries[n]["pack"] for n in stored if "pack" in entries[n]})
    total = sum(entries[n]["nbytes"] for n in big)
    total += sum(index["packs"][p]["nbytes"] for p in packs_needed)
    out: dict[int, Any] = {}
    with open_reader(path) as reader:
        if reader.size < index.get("file_nbytes", 0):
            raise CorruptCheckpointError(
                path, f"file is truncated: {reader.size} bytes, "
                f"expected {index['file_nbytes']}")
        with progress_bar(total, f"restoring {storage.basename(path)}", progress) as bar:
            # every byte range first (the backend may read them in parallel), then
            # the checks, which name the first leaf that fails
            pack_data = {n: np.empty(index["packs"][n]["nbytes"], dtype=np.uint8)
                         for n in packs_needed}
            for n in big:
                dtype = np.dtype(entries[n]["dtype"])
                target = into.get(n)
                out[n] = target if target is not None else fresh_array(entries[n]["shape"],
                                                                       dtype)
            ranges = [(index["packs"][n]["offset"], pack_data[n], index["packs"][n]["h5"])
                      for n in packs_needed]
            ranges += [(entries[n]["offset"], _bytes_view(out[n]), keystr(entries[n]["path"]))
                       for n in big]
            _read_ranges(reader, ranges, path, bar)
            for number in packs_needed:
                if verify and checksum(pack_data[number]) != index["packs"][number]["checksum"]:
                    keys = [keystr(entries[n]["path"]) for n in stored
                            if entries[n].get("pack") == number]
                    raise CorruptCheckpointError(
                        path, f"checksum mismatch in packed small leaves "
                        f"{index['packs'][number]['h5']} (holding {_few(keys)})",
                        key=keys[0] if keys else index["packs"][number]["h5"])
            for n in stored:
                out[n] = _finish_leaf(entries[n], pack_data, out.get(n), into.get(n), path,
                                      verify)
    for n in numbers:
        if "alias" in entries[n]:
            out[n] = _alias_view(entries[n], out[entries[n]["alias"]["of"]])
    return out


def _read_pieces(path: str, index: dict, numbers: list[int], into: dict,
                 regions: dict, verify: bool, progress: bool | None) -> dict[int, Any]:
    """Leaves (or boxes of leaves) whose bytes are in other files of the step, or
    that are wanted only in part: every piece that overlaps a wanted box is read
    (straight into the destination when it is a contiguous part of it) and verified.
    """
    entries = index["leaves"]
    out: dict[int, Any] = {}
    boxes: dict[int, tuple[list, list]] = {}  # leaf number -> (offsets, shape) wanted
    by_file: dict[str | None, list[tuple[int, dict]]] = {}
    for n in numbers:
        entry = entries[n]
        if n in regions:
            out[n] = into[n]
        else:
            target = into.get(n)
            out[n] = target if target is not None else fresh_array(
                entry["shape"], np.dtype(entry["dtype"]))
        if "external" in entry or "shards" in entry:
            pieces = pieces_of(entry)
        else:  # a leaf of this file wanted in part
            pieces = [{"file": None, "leaf": n, "offsets": [0] * len(entry["shape"]),
                       "shape": entry["shape"]}]
        boxes[n] = box = (list(regions.get(n, [0] * out[n].ndim)), list(out[n].shape))
        for piece in pieces:
            if _overlap(box, (piece["offsets"], piece["shape"])) is not None:
                by_file.setdefault(piece["file"], []).append((n, piece))
    for name, wanted in by_file.items():
        if name is None:
            file_path, sub_index = path, index
        else:
            file_path = storage.join(storage.parent(path), name)
            sub_index = _rank_index(index, name, file_path)
        targets: dict[int, np.ndarray] = {}
        copies = []
        for n, piece in wanted:
            _check_piece(entries[n], piece, sub_index, file_path, name is None)
            dest = out[n]
            inner, outer = _overlap(boxes[n], (piece["offsets"], piece["shape"]))
            part = dest[inner] if dest.ndim else dest
            if name is not None and part.shape == tuple(piece["shape"]) \
                    and part.flags.c_contiguous:
                targets[piece["leaf"]] = part  # the whole piece lands in one run of bytes
            else:
                copies.append((piece["leaf"], part, outer))
        arrays = read_leaves(file_path, sub_index, {p["leaf"] for _, p in wanted},
                             verify=verify, progress=progress, into=targets)
        for leaf, part, outer in copies:
            source = arrays[leaf]
            part[...] = source[outer] if source.ndim else source
    return out


def _overlap(box: tuple[list, list], piece: tuple[list, list]) -> tuple[tuple, tuple] | None:
    """Slices of the intersection, in the box's and in the piece's coordinates."""
    inner, outer = [], []
    for b0, bn, p0, pn in zip(box[0], box[1], piece[0], piece[1]):
        start, stop = max(b0, p0), min(b0 + bn, p0 + pn)
        if start >= stop:
            return None
        inner.append(slice(start - b0, stop - b0))
        outer.append(slice(start - p0, stop - p0))
    return tuple(inner), tuple(outer)


def _rank_index(index: dict, name: str, file_path: str) -> dict:
    """The index of a rank file, authenticated by the main index; read once per index."""
    cache = index.setdefault("_rank_indexes", {})  # in memory only, never written
    if name not in cache:
        record = index["files"][name]
        # a linked file (an incremental step's) may have an index of version 2 itself:
        # only its own stored leaves are ever read through it (see _check_piece)
        sub = read_header_index(file_path, expected_checksum=record["index_checksum"])
        sub["file_nbytes"] = record["nbytes"]
        cache[name] = sub
    return cache[name]


def _check_piece(entry: dict, piece: dict, sub_index: dict, file_path: str,
                 same_file: bool) -> None:
    """The rank file's entry for ``piece`` holds what the main index says."""
    if same_file:
        return
    subs = sub_index["leaves"]
    leaf = piece["leaf"]
    sub = subs[leaf] if leaf < len(subs) else None
    if (sub is None or sub["dtype"] != entry["dtype"] or sub["kind"] != entry["kind"]
            or sub["shape"] != piece["shape"]
            or any(field in sub for field in ("external", "shards", "alias"))):
        raise CorruptCheckpointError(file_path, f"leaf {leaf} of this file does not hold the "
                                     f"shard the step's index names", key=keystr(entry["path"]))


def _finish_leaf(entry: dict, pack_data: dict, array: np.ndarray | None,
                 target: np.ndarray | None, path: str, verify: bool) -> np.ndarray:
    """A stored leaf whose bytes are read: copied out of its pack, or checked."""
    if "pack" in entry:
        dtype = np.dtype(entry["dtype"])
        array = target if target is not None else fresh_array(entry["shape"], dtype)
        start = entry["pack_offset"]
        _bytes_view(array)[:] = pack_data[entry["pack"]][start:start + entry["nbytes"]]
    elif verify and checksum(_bytes_view(array)) != entry["checksum"]:
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


def _read_ranges(reader: Reader, ranges: list[tuple[int, np.ndarray, str]], path: str,
                 bar: Any) -> None:
    """Fill each ``(offset, buffer, key)``; a short file or a failed read names the key."""
    views = [(offset, memoryview(buffer).cast("B")) for offset, buffer, _ in ranges]
    try:
        reader.read_ranges([(o, v) for o, v in views if len(v)], bar.update)
    except (EOFError, OSError) as error:
        key = _failed_key(ranges, error)
        if isinstance(error, EOFError):
            raise CorruptCheckpointError(path, "file ends before this leaf's data",
                                         key=key) from None
        raise CorruptCheckpointError(path, f"cannot read ({_why(error)})", key=key) from None


def _failed_key(ranges: list[tuple[int, np.ndarray, str]], error: BaseException) -> str:
    """The key of the range a read error happened in (the first one when unknown)."""
    at = getattr(error, "offset", None)
    for offset, buffer, key in ranges:
        if at is not None and offset <= at < offset + buffer.nbytes:
            return key
    return ranges[0][2] if ranges else "/"
