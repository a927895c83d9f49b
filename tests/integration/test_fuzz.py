"""Fuzz restore and load with damaged and hostile files.

Part of the issue "Reliability: hostile and damaged files". Real files -- a
``CheckpointManager`` step (large arrays as their own datasets, many packed small
leaves, nested containers, int keys, str/bytes/None leaves), a ``ckpt.save`` file
and a Keras-like HDF5 file written by h5py -- are damaged byte by byte (bit flips,
truncation, zeroed runs, inserted and deleted bytes) and attacked structurally:
JSON attacks on the manifest, the index and the header (paths outside the step
directory, absurd shapes, hostile dtypes, wrong types everywhere, deep nesting,
NaN/Infinity, huge numbers, amplification), HDF5 attacks (external links,
external storage, virtual datasets, link cycles, decompression and fill-value
bombs) and filesystem attacks (FIFOs, directories, device files).

Every case must end in a ``ckpt.CheckpointError`` or return a tree (which, with
``verify=True``, means the checksums matched). Anything else is a failure: another
exception, a crash, a hang, a huge allocation (the workers run with ``RLIMIT_AS``),
a file opened or written outside the case's directory, or bytes of a file outside
it in the result.

Harness: the parent writes every case into its own directory (deterministic:
case ``i`` depends only on ``SEED`` and ``i``), then two workers -- fresh
interpreters -- run the cases, printing a JSON line before and after each one. A
worker that dies or stalls is reaped (killed after ``CASE_TIMEOUT``); the case it
had started is recorded as a crash or a hang, and a new worker goes on with the
rest. After each case the parent checks that the case's directory is unchanged
and, after each chunk, that nothing appeared next to the case directories.

``CKPT_SOAK=1`` runs thousands of cases; ``CKPT_FUZZ_CASES=3,17`` runs only those;
``CKPT_FUZZ_SEED`` and ``CKPT_FUZZ_FAMILY`` (e.g. ``foreign-bytes``) help explore.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import queue
import random
import re
import shutil
import stat
import subprocess
import sys
import threading
import warnings
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

import ckpt
from ckpt import h5format
from ckpt.tree import LEAF_KINDS
from tests.conftest import ROOT, rounds
from tests.step_files import authenticate, edit_index, embed_index, split_state

SEED = int(os.environ.get("CKPT_FUZZ_SEED", "20240611"))
CASES = rounds(500, 3000)
CHUNK = 160  # cases on disk at a time
WORKERS = 2
CASE_TIMEOUT = 30.0  # seconds; a case taking longer is a hang
START_TIMEOUT = 60.0  # a worker's imports
MEMORY_LIMIT = 2 * 1024**3  # RLIMIT_AS of a worker
FOREIGN_TIMEOUT = 8.0  # seconds ckpt.foreign gives its child process in the workers
# mutated plain HDF5 files per entry point (ckpt.load, ckpt show, ckpt verify)
PLAIN_CASES = int(os.environ.get("CKPT_FUZZ_PLAIN", rounds(200, 3334)))
SECRET = "CKPT-FUZZ-SECRET-3f9a1c"
FAMILY = os.environ.get("CKPT_FUZZ_FAMILY")  # debugging: only this family of random cases

# --------------------------------------------------------------------- worker

WORKER = r"""
import json, os, resource, sys, traceback, warnings

root, list_file, memory, secret = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
warnings.simplefilter("ignore")

import contextlib, io, tempfile
import numpy as np
import ckpt
from ckpt import cli

# ckpt.foreign's private scratch directories (the child process writes its answer there)
SCRATCH = os.path.join(os.path.abspath(tempfile.gettempdir()), "ckpt-foreign-")

root = os.path.abspath(root)
SENSITIVE = ("/etc/passwd", "/etc/shadow", "/dev/zero", "/dev/urandom")
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
FS_EVENTS = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.symlink", "os.link",
             "os.truncate", "os.chmod", "os.chown", "os.utime", "shutil.rmtree",
             "shutil.copyfile", "shutil.move", "os.mkfifo", "os.mknod"}
state = {"on": False, "events": []}


def hook(event, args):
    if state["on"] and (event == "open" or event in FS_EVENTS):
        state["events"].append((event, args))


sys.addaudithook(hook)


def audit(case_dir):
    # Python-level file access during the case (HDF5's own opens are not audited:
    # the parent's directory checks and the secret scan cover those). Paths are
    # judged as ckpt computed them: a symlink planted in the case is followed.
    problems = []
    case_dir = os.path.abspath(case_dir)
    for event, args in state["events"]:
        path = args[0] if args else None
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            continue
        real = os.path.abspath(path)
        if "__pycache__" in real or real.startswith(SCRATCH) or real == os.devnull:
            continue  # bytecode caches; ckpt.foreign's scratch and its child's stdout
        inside = real == case_dir or real.startswith(case_dir + os.sep)
        if event == "os.mkdir" and inside:
            continue  # CheckpointManager(dir) does mkdir(exist_ok=True); snapshots catch creations
        if event != "open":
            problems.append(f"{event} {path}")
            continue
        mode, flags = (args[1] or ""), (args[2] or 0)
        if any(c in mode for c in "wax+") or (not mode and flags & WRITES):
            problems.append(f"opened for writing: {path}")
        elif real in SENSITIVE and not inside:
            problems.append(f"opened {path}")
        elif (real == root or real.startswith(root + os.sep)) and not inside:
            problems.append(f"opened outside the case directory: {path}")
    return problems


def leaked(value):
    needle = secret.encode()
    stack, seen = [value], 0
    while stack:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, str):
            if secret in node:
                return True
        elif isinstance(node, (bytes, bytearray)):
            if needle in node:
                return True
        elif isinstance(node, (np.ndarray, np.generic)):
            array = np.asarray(node)
            if array.dtype.kind == "O":
                stack.extend(array.ravel().tolist())
            elif needle in array.tobytes():
                return True
    return False


def keys_of(spec):
    keys = spec.get("keys")
    if isinstance(keys, list):
        return [tuple(k) if isinstance(k, list) else k for k in keys]
    return keys


def run_cli(args):
    # the ckpt command in process: exit 0 with nothing on stderr, or one "ckpt: error:"
    # line with exit 2 (verify: exit 1 and a FAILED line); anything else is a failure
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    lines = err.getvalue().splitlines()
    if code == 0 and not lines:
        return {"stdout": out.getvalue()}
    if code == 2 and len(lines) == 1 and lines[0].startswith("ckpt: error: "):
        raise ckpt.CheckpointError(lines[0])
    if args[0] == "verify" and code == 1 and not lines and "FAILED" in out.getvalue():
        raise ckpt.CheckpointError(out.getvalue()[-300:])
    raise AssertionError(f"ckpt {args[0]}: exit {code}, stderr {err.getvalue()[-2000:]!r}")


def run(case_dir, spec):
    api = spec["api"]
    if api in ("show", "verify"):
        return run_cli([api, os.path.join(case_dir, spec["file"])])
    if api == "restore":
        mgr = ckpt.CheckpointManager(os.path.join(case_dir, "ckpt"))
        into = None
        if spec.get("into") is not None:  # a template like the saved state
            from tests.integration.test_fuzz import make_state

            into = make_state()
        return mgr.restore(spec.get("step"), keys=keys_of(spec), verify=spec["verify"],
                           into=into, strict=spec.get("into", True))
    path = os.path.join(case_dir, spec["file"])
    if api == "load":
        return ckpt.load(path, keys=keys_of(spec), verify=spec["verify"])
    if api == "load_metadata":
        return ckpt.load_metadata(path)
    if api == "selftest":  # the harness's own test: misbehave on purpose
        how = spec["how"]
        if how == "segfault":
            import ctypes
            ctypes.string_at(0)
        elif how == "hang":
            import time
            time.sleep(3600)
        elif how == "allocate":
            return np.ones(2**32, np.uint8)
        elif how == "outside":
            open(os.path.join(case_dir, "..", "stray.txt"), "w").close()
        elif how == "leak":
            return {"x": [np.frombuffer(open(spec["file"], "rb").read(), np.uint8)]}
        elif how == "touch":
            open(os.path.join(case_dir, "new.txt"), "w").close()
            raise ckpt.CorruptCheckpointError(case_dir, "looks fine, but wrote a file")
        elif how == "keyerror":
            raise KeyError("x")
        return {"fine": 1}
    raise AssertionError(api)


for line in open(list_file):
    cid, case_dir = json.loads(line)
    with open(os.path.join(case_dir, "..", f"{cid}.spec.json")) as handle:
        spec = json.load(handle)
    print(json.dumps({"start": cid}), flush=True)
    out = {"done": cid}
    state["events"].clear()
    state["on"] = True
    result = None
    try:
        result = run(case_dir, spec)
        out["outcome"] = "tree"
    except ckpt.CheckpointError as error:
        out["outcome"] = "error"
        out["type"] = type(error).__name__
        out["detail"] = str(error)[:300]
    except BaseException as error:  # anything else is a failure: report it
        out["outcome"] = "FAIL"
        out["type"] = type(error).__name__
        out["detail"] = "".join(traceback.format_exception(error))[-3000:]
    finally:
        state["on"] = False
    problems = audit(case_dir)
    if out["outcome"] == "tree":
        try:
            if leaked(result):
                problems.append("the result holds bytes of a file outside the case")
        except BaseException as error:
            problems.append(f"scanning the result failed: {error!r}")
    if problems:
        out["outcome"] = "FAIL"
        out["type"] = out.get("type", "tree")
        out["detail"] = "; ".join(problems)[:3000] + " | " + out.get("detail", "")
    del result
    print(json.dumps(out), flush=True)
"""


class Result(dict):
    """One case's outcome: ``outcome`` is tree, error, FAIL, crash, hang or touched."""


def _worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("CKPT_FAILPOINTS", None)
    # a libhdf5 that loops must end as ckpt's timeout error, well before CASE_TIMEOUT
    env["CKPT_FOREIGN_TIMEOUT"] = str(FOREIGN_TIMEOUT)
    return env


def _run_shard(cases: list[tuple[str, str]], root: Path, snapshots: dict, tag: str,
               timeout: float = CASE_TIMEOUT) -> dict[str, Result]:
    """Run ``cases`` in worker processes; a crash or hang costs only its case."""
    results: dict[str, Result] = {}
    pending = list(cases)
    attempt = 0
    while pending:
        attempt += 1
        list_file = root / f"worker-{tag}-{attempt}.list"
        list_file.write_text("".join(json.dumps(c) + "\n" for c in pending))
        stderr_path = root / f"worker-{tag}-{attempt}.stderr"
        with open(stderr_path, "w+b") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(root), str(list_file), str(MEMORY_LIMIT),
                 SECRET],
                stdout=subprocess.PIPE, stderr=stderr, cwd=root, env=_worker_env(),
                text=True)
            lines: queue.Queue = queue.Queue()

            def pump(stream=proc.stdout, lines=lines):
                for line in stream:
                    lines.put(line)
                lines.put(None)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            current = None
            progressed = False
            while True:
                try:
                    line = lines.get(timeout=timeout if current else START_TIMEOUT)
                except queue.Empty:
                    proc.kill()  # our own worker, by its handle
                    proc.wait()
                    if current is not None:
                        results[current] = Result(outcome="hang", type="timeout",
                                                  detail=f"no answer in {timeout} s")
                    break
                if line is None:
                    code = proc.wait()
                    if current is not None:
                        stderr.seek(0)
                        tail = stderr.read().decode(errors="replace")[-2000:]
                        results[current] = Result(outcome="crash", type=f"exit {code}",
                                                  detail=tail)
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # stray output of a library
                if "start" in message:
                    current = message["start"]
                    continue
                cid = message.pop("done")
                current = None
                progressed = True
                results[cid] = Result(message)
                changed = _changed(snapshots[cid])
                if changed:
                    results[cid] = Result(outcome="touched", type=message.get("outcome"),
                                          detail=f"case directory changed: {changed}")
            reader.join(timeout=5)
            proc.stdout.close()
        remaining = [c for c in pending if c[0] not in results]
        if remaining and not progressed and remaining == pending:
            # the worker died before finishing any case: blame the first one
            results[remaining[0][0]] = Result(outcome="crash", type="worker start",
                                              detail=stderr_path.read_text()[-2000:])
            remaining = remaining[1:]
        pending = remaining
    return results


def _snapshot(path: Path) -> tuple[str, dict]:
    entries = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            entries[os.path.relpath(full, path)] = (stat.S_IFMT(st.st_mode), st.st_size,
                                                    st.st_mtime_ns)
    return str(path), entries


def _changed(snapshot: tuple[str, dict]) -> list[str]:
    path, before = snapshot
    after = _snapshot(Path(path))[1]
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


# --------------------------------------------------------------------- corpus


def make_state() -> dict:
    rng = np.random.default_rng(7)
    return {
        "model": {
            "dense": {"kernel": rng.standard_normal((256, 256)).astype(np.float32),
                      "bias": np.zeros(256, np.float32)},
            "emb": rng.standard_normal((96, 128)),
            "mask": rng.random(70_000) < 0.5,
            "codes": (np.arange(80_000) % 251).astype(np.uint8),
            "near_pack_limit": np.arange(15_000, dtype=np.float32),  # 60 KB, packed
        },
        "opt": {
            "state": {0: {"m": rng.standard_normal(64), "v": np.ones(64, np.float16)},
                      1: {"m": rng.standard_normal((4, 4)).astype(np.complex64)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                              "name": "adam", "amsgrad": False}],
        },
        "rng": {"seed": 2**70 + 12345, "neg": -(2**80), "key": b"\x00\xffkey",
                "state": np.uint32(7), "none": None, "c": 1 + 2j, "flag": True},
        "history": [(i, i * 0.5, f"step {i}", None if i % 3 else b"b") for i in range(60)],
        "names": np.array(["alpha", "\u03b2eta", ""]),
        "raw": np.array([b"x", b"yz"]),
        "times": np.array(["2024-01-01T00:00", "NaT"], dtype="datetime64[ns]"),
        "durations": np.arange(3).astype("timedelta64[s]"),
        "empty": np.zeros((0, 3), np.float32),
        "zero_d": np.array(2.5),
        "scalar": np.float32(1.5),
        "keys": {0: "int key", "0": "str key", "a/b": 1, ".hidden": 2, "": "empty",
                 "\u00fcn\u00ef": "\u00e7", "%": "percent"},
        "nested": [[[[{"deep": (1, [2, (3,)])}]]]],
        "big_list": [np.full(40_000, i, np.int16) for i in range(2)],
        "text": "t\u00ebxt " * 10 + "\ud800",  # a lone surrogate round-trips
    }


def make_keras_like(path: Path) -> None:
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {}})
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([b"dense", b"dense_1"])
        dense = weights.create_group("dense/dense")
        dense.create_dataset("kernel:0", data=rng.standard_normal((128, 128)).astype("f4"))
        dense.create_dataset("bias:0", data=np.zeros(128, "f4"))
        weights.create_dataset("dense_1/dense_1/kernel:0", compression="gzip", chunks=(32, 16),
                               data=rng.standard_normal((128, 16)).astype("f4"))
        weights.create_dataset("dense_1/dense_1/bias:0", data=np.arange(16, dtype="f4"),
                               compression="lzf", shuffle=True, fletcher32=True)
        opt = f.create_group("optimizer_weights")
        opt.create_dataset("iteration:0", data=np.int64(10))
        opt.create_dataset("m:0", data=rng.standard_normal(300))
        f.create_dataset("names", data=["alpha", "beta"], dtype=h5py.string_dtype())
        f.create_dataset("fixed", data=np.array([b"ab", b"c"]))
        f.create_dataset("empty", shape=(0, 4), dtype="f4")
        f.create_dataset("null", data=h5py.Empty("f4"))
        f.create_dataset("records", data=np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]))
        f.create_dataset("ragged", shape=(2,), dtype=h5py.vlen_dtype(np.int32))
        f["ragged"][0] = np.arange(3, dtype=np.int32)
        f["link_to_bias"] = h5py.SoftLink("/model_weights/dense/dense/bias:0")


def v1_manifest(manifest: bytes, state: bytes) -> bytes:
    """The format-1 layout of a step's manifest: the file's full index repeated in it."""
    record = json.loads(manifest)
    index = split_single(state)[2]
    index.pop("metadata", None)
    index["file_nbytes"] = len(state)
    record["version"] = 1
    record["files"] = {"state.h5": index}
    return json.dumps(record, separators=(",", ":")).encode()


def make_layouts(path: Path, libver: str) -> None:
    """Chunked, filtered, compound, vlen and attribute-heavy datasets in one file."""
    rng = np.random.default_rng(5)
    with h5py.File(path, "w", libver=libver) as f:
        for i in range(12):  # attribute-heavy: scalars, arrays, vlen and fixed strings
            f.attrs[f"a{i}"] = rng.standard_normal(i + 1)
        f.attrs["config"] = json.dumps({"layers": list(range(40))})
        f.attrs["names"] = np.array([b"alpha", b"beta"])
        f.attrs["record"] = np.array((1, 2.5), dtype=[("x", "<i4"), ("y", "<f8")])
        g = f.create_group("filtered")
        g.attrs["note"] = "chunked"
        g.create_dataset("gzip", data=rng.standard_normal((64, 64)).astype("f4"),
                         chunks=(16, 16), compression="gzip", shuffle=True, fletcher32=True)
        g.create_dataset("lzf", data=np.arange(5000, dtype="<i8"), chunks=(512,),
                         compression="lzf")
        g.create_dataset("fletcher", data=np.arange(3000, dtype=">f8"), chunks=(1000,),
                         fletcher32=True)
        g.create_dataset("growing", data=np.arange(100, dtype="i2"), chunks=(10,),
                         maxshape=(None,))
        g.create_dataset("scaleoffset", data=np.arange(2000, dtype="i4"), chunks=(500,),
                         scaleoffset=0)
        nested = np.dtype([("id", "<u2"), ("pos", "<f4", (3,)),
                           ("inner", [("a", "i1"), ("b", ">f8")])])
        f["compound"] = np.zeros(20, dtype=nested)
        f.create_dataset("compound_chunked", data=np.zeros(50, dtype=nested), chunks=(10,),
                         compression="gzip")
        f.create_dataset("strings", data=[f"s{i}" * i for i in range(30)],
                         dtype=h5py.string_dtype())
        ragged = f.create_dataset("ragged", shape=(10,), dtype=h5py.vlen_dtype(np.int32))
        for i in range(10):
            ragged[i] = np.arange(i, dtype=np.int32)
        for i in range(8):
            d = f.create_dataset(f"many/d{i}", data=np.full(i + 1, i, "u1"))
            d.attrs["index"] = i
            d.attrs["label"] = f"dataset {i}"
        f["link"] = h5py.SoftLink("/filtered/gzip")


KERAS_SCRIPT = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, keras
keras.utils.set_random_seed(0)
inputs = keras.Input(shape=(32,), name="digits")
x = keras.layers.Dense(16, activation="relu", name="dense_1")(inputs)
outputs = keras.layers.Dense(4, activation="softmax", name="predictions")(x)
model = keras.Model(inputs=inputs, outputs=outputs, name="mlp")
model.compile(loss="sparse_categorical_crossentropy", optimizer="rmsprop")
rng = np.random.default_rng(0)
model.fit(rng.random((16, 32), dtype=np.float32), rng.integers(0, 4, 16), epochs=1, verbose=0)
model.save(os.path.join(sys.argv[1], "model.h5"))
model.save_weights(os.path.join(sys.argv[1], "model.weights.h5"))
"""


def plain_sources(base: Path) -> dict[str, bytes]:
    """Plain HDF5 files to mutate: two layouts files and, when Keras is installed, real
    Keras 3 files (``model.save("m.h5")`` and ``save_weights``)."""
    sources = {}
    for libver in ("earliest", "latest"):  # v0 and v3 superblocks, old and new B-trees
        path = base / f"layouts-{libver}.h5"
        make_layouts(path, libver)
        sources[f"layouts-{libver}"] = path.read_bytes()
    if importlib.util.find_spec("keras") is not None:
        made = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(base)], timeout=300,
                              capture_output=True, text=True)
        assert made.returncode == 0, made.stderr[-2000:]
        sources["keras-model"] = (base / "model.h5").read_bytes()
        sources["keras-weights"] = (base / "model.weights.h5").read_bytes()
    return sources


class Corpus:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.outside = base / "outside"
        self.outside.mkdir()
        self.secret_txt = self.outside / "secret.txt"
        self.secret_txt.write_bytes((SECRET.encode() + b"\n") * 4000)
        self.secret_h5 = self.outside / "secret.h5"
        with h5py.File(self.secret_h5, "w") as f:
            f["d"] = np.frombuffer((SECRET.encode() * 100), np.uint8)
            f["g/d"] = np.frombuffer((SECRET.encode() * 10), np.uint8)
        self.state = make_state()
        mgr_dir = base / "pristine_mgr"
        mgr = ckpt.CheckpointManager(mgr_dir)
        mgr.save(1, self.state, metrics={"val_loss": 0.5}, metadata={"note": "fuzz"}, force=True)
        step_dir = mgr_dir / "step_1"
        self.state_h5 = (step_dir / "state.h5").read_bytes()
        self.manifest = (step_dir / "manifest.json").read_bytes()
        self.manifest_v1 = v1_manifest(self.manifest, self.state_h5)
        single = base / "single.ckpt"
        ckpt.save(single, self.state, metadata={"epoch": 3, "tags": ["a", "b"]})
        self.single = single.read_bytes()
        keras = base / "keras.h5"
        make_keras_like(keras)
        self.keras = keras.read_bytes()
        self.plain = {"keras-like": self.keras, **plain_sources(base)}
        # a 4 GiB gzip bomb in a 4 MiB file: one compressed chunk written 64 times
        bomb = base / "bomb.h5"
        chunk = zlib.compress(bytes(2**26), 9)
        with h5py.File(bomb, "w") as f:
            f["w"] = np.zeros(10, "f4")
            d = f.create_dataset("bomb", shape=(2**32,), dtype="u1", chunks=(2**26,),
                                 compression="gzip")
            for i in range(64):
                d.id.write_direct_chunk((i * 2**26,), chunk, filter_mask=0)
        self.bomb = bomb.read_bytes()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("fuzz-corpus"))


# ------------------------------------------------------------ byte mutations


def _position(rng: random.Random, size: int, hot: list[tuple[int, int]]) -> int:
    if hot and rng.random() < 0.6:
        lo, hi = rng.choice(hot)
        hi = min(hi, size)
        if lo < hi:
            return rng.randrange(lo, hi)
    return rng.randrange(max(size, 1))


def mutate_bytes(data: bytes, rng: random.Random, hot: list[tuple[int, int]]) -> tuple[bytes,
                                                                                     str]:
    buf = bytearray(data)
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        if not buf:
            break
        op = rng.choice(["flip", "flip", "flip", "truncate", "zero", "insert", "delete", "ff",
                         "copy", "byte"])
        pos = _position(rng, len(buf), hot)
        if op == "flip":
            for _ in range(rng.choice([1, 1, 2, 8])):
                p = min(len(buf) - 1, pos + rng.randrange(64))
                buf[p] ^= 1 << rng.randrange(8)
        elif op == "truncate":
            del buf[pos:]
        elif op in ("zero", "ff"):
            n = rng.choice([1, 4, 16, 512, 4096])
            buf[pos:pos + n] = (b"\x00" if op == "zero" else b"\xff") * len(buf[pos:pos + n])
        elif op == "insert":
            n = rng.choice([1, 3, 8, 100, 5000])
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(n))
        elif op == "delete":
            del buf[pos:pos + rng.choice([1, 7, 64, 4096])]
        elif op == "copy":
            src = rng.randrange(len(buf))
            n = rng.choice([8, 64, 1024])
            buf[pos:pos + n] = buf[src:src + n]
        else:
            buf[pos] = rng.choice([0, 0xFF, 0x7F, 0x80, ord('"'), ord("{"), ord("9")])
        done.append(f"{op}@{pos}")
    return bytes(buf), " ".join(done)


# ------------------------------------------------------------- JSON attacks

BIG = [2**31, 2**32, 2**53 + 1, 2**62, 2**63, 2**64, 10**40, -1, -(2**63), -(10**40)]
HOSTILE = [None, True, False, 0, 1, 1.5, -0.0, 1e308, math.nan, math.inf, -math.inf, *BIG,
           "", "x", "O", "|O", "V8", "S0", "<U0", "i4,i4", "(2,)<i4", "../../etc/passwd",
           "/etc/passwd", "\x00", "\ud800", "x" * 100_000, "4096", [], [0], [-1], [2**62],
           [2**62, 2**62], [1] * 100, [[]], [None], [1.5], ["1"], {}, {"a": 1},
           {"t": "list", "c": []}, {"t": "dict", "k": [["x"]], "c": [0]}]
SHAPES = [[2**62], [2**62, 2**62], [2**63], [2**64], [-1], [-(2**63)], [0, 2**62], [2**62, 0],
          [0, 2**63], [0, 2**64], [0] * 64, [0] * 65, [1] * 64, [1] * 65, [1] * 10_000,
          [2**31] * 3, [2**21] * 3, [10**30], [1.5], ["3"], [True], [None], [[2]], None, 3,
          "3", {}, [], [0], [7], list(range(1, 12))]
DTYPES = ["O", "|O", "<O", "V8", "|V8", "V0", "|V0", "S0", "|S0", "<U0", "U", "a5", "S5",
          "i4,i4", "(2,)<i4", "[('a', '<i4')]", "<M8", "<M8[ns]", "<m8[s]", "|b1", "<f16",
          "<c32", "<i8", ">i8", "=f4", "float64", "int", "", "x", "<f3", "|S99999999999",
          "<U2147483647", "|S4611686018427387904", "T", "<?", "<V16", "|u1", "|i1", ">U3",
          "<M8[10s]", "<M8[xx]", 5, None, True, ["<f4"], {"descr": "<f4"}, [["a", "<i4"]]]
KINDS = [*sorted(LEAF_KINDS - {"torch"}), "torch", "", "ndarray ", "pickle", "object",
         "NDARRAY", None, 1, True, ["ndarray"], {"k": 1}]
EXTRAS = [None, {}, [], "x", 5, {"dtype": 5}, {"dtype": ["float32"]}, {"dtype": None},
          {"requires_grad": "yes"}, {"parameter": []}, [{"dtype": "float32"}]]
CONTAINERS = ["dict", "odict", "list", "tuple"]


class Doc:
    """A JSON document under attack; ``raw`` maps placeholders to literal JSON text."""

    def __init__(self, top: dict, index: dict, file_size: int, corpus: Corpus,
                 manifest: bool) -> None:
        self.top, self.index, self.file_size = top, index, file_size
        self.corpus, self.manifest = corpus, manifest
        self.raw: dict[str, str] = {}

    def placeholder(self, text: str) -> str:
        name = f"@@RAW{len(self.raw)}@@"
        self.raw[name] = text
        return name

    def dumps(self) -> bytes:
        text = json.dumps(self.top, separators=(",", ":"))
        for name, raw in self.raw.items():
            text = text.replace(json.dumps(name), raw)
        return text.encode("utf-8", "surrogatepass")


def _slots(node) -> list[tuple]:
    out, stack = [], [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            items = list(current.items())
        elif isinstance(current, list):
            items = list(enumerate(current))
        else:
            continue
        for key, value in items:
            out.append((current, key))
            stack.append(value)
    return out


def _nbytes(shape, dtype) -> int | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            itemsize = np.dtype(dtype).itemsize
    except Exception:
        return None
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        return None
    return math.prod(shape) * itemsize


def _entry(doc: Doc, rng, packed: bool | None = None, kinds=None) -> dict:
    entries = [e for e in doc.index["leaves"]
               if (packed is None or ("pack" in e) == packed)
               and (kinds is None or e["kind"] in kinds)]
    return rng.choice(entries)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def a_field(doc: Doc, rng) -> str:
    notes = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        where = rng.random()
        if where < 0.6:
            scope = doc.index["leaves"]
        elif where < 0.8 or not doc.manifest:
            scope = doc.index
        else:
            scope = doc.top
        slots = _slots(scope)
        parent, key = rng.choice(slots)
        value = copy.deepcopy(rng.choice(HOSTILE))
        parent[key] = value
        notes.append(f"[{key!r}]={_short(value)}")
    return "field " + " ".join(notes)


def a_retype(doc: Doc, rng) -> str:
    parent, key = rng.choice(_slots(doc.index if rng.random() < 0.8 else doc.top))
    value = parent[key]
    if isinstance(value, bool):
        new = int(value) if rng.random() < 0.5 else str(value).lower()
    elif isinstance(value, int):
        new = rng.choice([str(value), float(value), value != 0, [value], {"v": value}])
    elif isinstance(value, float):
        new = rng.choice([str(value), int(value) if math.isfinite(value) else 0, [value]])
    elif isinstance(value, str):
        new = rng.choice([[value], {value: value}, len(value), value.encode().hex(), None])
    elif isinstance(value, list):
        new = rng.choice([{str(i): v for i, v in enumerate(value)}, tuple(value)[:1],
                          json.dumps(value)[:100], len(value)])
    elif isinstance(value, dict):
        new = rng.choice([list(value.values()), list(value.keys()), json.dumps(value)[:100]])
    else:
        new = rng.choice([0, "", [], {}])
    parent[key] = new
    return f"retype [{key!r}] {type(value).__name__}->{type(new).__name__}"


def a_shape(doc: Doc, rng) -> str:
    entry = _entry(doc, rng)
    shape = copy.deepcopy(rng.choice(SHAPES))
    entry["shape"] = shape
    fixed = rng.random() < 0.75
    if fixed and (nbytes := _nbytes(shape, entry["dtype"])) is not None:
        entry["nbytes"] = nbytes
    return f"shape {_short(shape)} of {entry['dtype']} (nbytes fixed: {fixed})"


def a_dtype(doc: Doc, rng) -> str:
    entry = _entry(doc, rng)
    dtype = copy.deepcopy(rng.choice(DTYPES))
    entry["dtype"] = dtype
    how = rng.choice(["keep", "fix", "huge"])
    if how == "huge":
        entry["shape"] = [rng.choice([2**40, 2**62, 2**20])]
    if how != "keep" and (nbytes := _nbytes(entry["shape"], dtype)) is not None:
        entry["nbytes"] = nbytes
    return f"dtype {_short(dtype)} ({how}) shape {entry['shape']}"


def a_offset(doc: Doc, rng) -> str:
    entry = _entry(doc, rng, packed=False)
    size, n = doc.file_size, entry["nbytes"]
    other = _entry(doc, rng, packed=False)
    value = rng.choice([size, size + 1, size - n + 1, size - n, 2**63, 2**64, -1, -(2**63),
                        0, 4095, 4096, 4096.0, "4096", None, [4096], True, size * 2,
                        other["offset"], other["offset"] + 1, 10**40, math.nan])
    entry["offset"] = value
    if rng.random() < 0.3 and isinstance(value, int) and value >= 0:
        entry["nbytes"] = rng.choice([size, 2**62, size - value])
    return f"offset {_short(value)} nbytes {entry['nbytes']}"


def a_pack(doc: Doc, rng) -> str:
    entry = _entry(doc, rng, packed=True)
    packs = doc.index["packs"]
    pack_nbytes = packs[entry["pack"]]["nbytes"]
    how = rng.choice(["pack", "offset", "repoint", "repoint", "repoint-kind", "del"])
    if how == "pack":
        entry["pack"] = rng.choice([-1, len(packs), 10**20, 0.0, "0", None, True, [0]])
    elif how == "offset":
        entry["pack_offset"] = rng.choice([-1, 2**63, pack_nbytes,
                                           pack_nbytes - entry["nbytes"] + 1, 1.5, "0", None])
    elif how.startswith("repoint"):
        # point at other bytes of the same pack: its checksum still matches
        entry["pack_offset"] = rng.randrange(0, max(1, pack_nbytes - entry["nbytes"] + 1))
        if how == "repoint-kind":
            entry["kind"] = rng.choice(["str", "bigint", "bool", "int", "bytes", "none"])
            entry["dtype"] = "|u1"
            entry["shape"] = [entry["nbytes"]]
    else:
        del entry[rng.choice(["pack", "pack_offset"])]
    return f"pack {how}: {entry.get('pack')!r}+{entry.get('pack_offset')!r} kind {entry['kind']}"


def a_packs(doc: Doc, rng) -> str:
    packs = doc.index["packs"]
    how = rng.choice(["nbytes", "offset", "checksum", "table", "h5"])
    pack = rng.choice(packs)
    if how == "nbytes":
        pack["nbytes"] = rng.choice([2**62, 2**40, doc.file_size, doc.file_size + 1, -1, 1.5,
                                     "1", None, 0])
    elif how == "offset":
        pack["offset"] = rng.choice([doc.file_size, -1, 0, 2**64, "4096", None, 4096])
    elif how == "checksum":
        pack["checksum"] = rng.choice([None, 5, "", "xxh3_64:0", [], True])
    elif how == "h5":
        pack["h5"] = rng.choice([None, 5, "../../etc/passwd", [], "x" * 10_000])
    else:
        doc.index["packs"] = copy.deepcopy(rng.choice([None, {}, "x", [[]], [None], [],
                                                      [pack] * 5000, packs[::-1]]))
        return f"packs table {_short(doc.index['packs'])}"
    return f"packs {how}: {_short(pack.get(how))}"


def a_kind(doc: Doc, rng) -> str:
    entry = _entry(doc, rng)
    entry["kind"] = copy.deepcopy(rng.choice(KINDS))
    if rng.random() < 0.4:
        entry["extra"] = copy.deepcopy(rng.choice(EXTRAS))
    return f"kind {_short(entry['kind'])} on {entry['dtype']}{entry['shape']} " \
           f"extra {_short(entry.get('extra'))}"


def _containers(tree) -> list[dict]:
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.append(node)
            stack.extend(node.get("c", []))
    return out


def a_tree(doc: Doc, rng) -> str:
    index = doc.index
    nodes = _containers(index["tree"])
    node = rng.choice(nodes)
    how = rng.choice(["whole", "leaf", "key", "keys", "children", "tag", "extra-k"])
    if how == "whole":
        index["tree"] = copy.deepcopy(rng.choice([None, "x", 1.5, True, 0, [], {}, {"t": "dict"},
                                                  {"t": "dict", "k": [], "c": []},
                                                  {"t": "list", "c": [0]},
                                                  {"t": "set", "c": [0, 1]}]))
        return f"tree := {_short(index['tree'])}"
    if how == "leaf":
        positions = [i for i, c in enumerate(node["c"]) if not isinstance(c, dict)]
        if positions:
            value = rng.choice([-1, len(index["leaves"]), 10**30, 1.5, True, "0", None, [0],
                                {"t": "list", "c": []}, 2**63])
            node["c"][rng.choice(positions)] = value
            return f"tree leaf := {_short(value)}"
    if how == "key" and node.get("k"):
        value = rng.choice([["x"], {"a": 1}, None, 1.5, True, 2**70, "", "\x00", "/"])
        node["k"][rng.randrange(len(node["k"]))] = value
        return f"tree key := {_short(value)}"
    if how == "keys" and "k" in node:
        keys = node["k"]
        node["k"] = rng.choice([keys[:-1], keys + ["extra"], keys[:1] * len(keys), None, "ab",
                                {"a": 1}, list(reversed(keys))])
        return f"tree keys := {_short(node['k'])}"
    if how == "children":
        node["c"] = rng.choice([{"0": 0}, "abc", None, 5, node["c"] + node["c"][:1],
                                node["c"][:-1]])
        return f"tree children := {_short(node['c'])}"
    if how == "tag":
        node["t"] = rng.choice(["set", "frozenset", "object", "__import__", None, 1, ["list"],
                                "ndarray", *CONTAINERS])
        return f"tree tag := {_short(node['t'])}"
    node["k"] = [str(i) for i in range(len(node["c"]))] if "k" not in node else node["k"]
    node["t"] = rng.choice(CONTAINERS)
    return f"tree tag {node['t']} with keys"


def _deep_text(depth: int, leaf: str, rng) -> str:
    tag = rng.choice(["list", "tuple", "dict"])
    if tag == "dict":
        return '{"t":"dict","k":["a"],"c":[' * depth + leaf + "]}" * depth
    return ('{"t":"' + tag + '","c":[') * depth + leaf + "]}" * depth


def a_deep(doc: Doc, rng) -> str:
    depth = rng.choice([100_000, 20_000, 3000, 1200, 1000, 995, 990, 950, 900, 800, 700, 600,
                        500, 450, 400, 300, 100])
    consistent = rng.random() < 0.7
    if consistent:
        doc.index["leaves"] = [_entry(doc, rng)]
    doc.index["tree"] = doc.placeholder(_deep_text(depth, "0", rng))
    return f"deep tree {depth} levels (consistent: {consistent})"


def a_amplify(doc: Doc, rng) -> str:
    packed = rng.random() < 0.5
    if packed:
        entry = max((e for e in doc.index["leaves"] if "pack" in e), key=lambda e: e["nbytes"])
    else:
        entry = max((e for e in doc.index["leaves"] if "pack" not in e),
                    key=lambda e: e["nbytes"])
    count = 3 * 1024**3 // entry["nbytes"] + 1
    doc.index["leaves"] = [dict(entry, path=["dup", i]) for i in range(count)]
    doc.index["tree"] = {"t": "list", "c": list(range(count))}
    return f"amplify {'packed' if packed else 'big'} leaf of {entry['nbytes']} B x {count}"


def a_mismatch(doc: Doc, rng) -> str:
    entries = doc.index["leaves"]
    how = rng.choice(["drop", "append", "swap", "swap-kind", "swap-shape", "reverse"])
    i, j = rng.randrange(len(entries)), rng.randrange(len(entries))
    if how == "drop":
        del entries[i]
    elif how == "append":
        entries.append(copy.deepcopy(entries[i]))
    elif how == "swap":
        entries[i], entries[j] = entries[j], entries[i]
    elif how == "swap-kind":
        entries[i]["kind"], entries[j]["kind"] = entries[j]["kind"], entries[i]["kind"]
    elif how == "swap-shape":
        for name in ("shape", "dtype"):
            entries[i][name], entries[j][name] = entries[j][name], entries[i][name]
    else:
        entries.reverse()
    return f"mismatch {how} {i} {j}"


def a_top(doc: Doc, rng) -> str:
    key = rng.choice(["leaves", "packs", "tree", "format", "version", "file_nbytes",
                      "metadata", "file_nbytes"])
    if rng.random() < 0.2:
        doc.index.pop(key, None)
        return f"index del {key}"
    value = copy.deepcopy(rng.choice(HOSTILE + [-1, doc.file_size + 1, 2**63, "x", 1e400]))
    doc.index[key] = value
    return f"index {key} := {_short(value)}"


def a_path(doc: Doc, rng) -> str:
    entry = _entry(doc, rng)
    entry["path"] = copy.deepcopy(rng.choice([None, "a", [], [[1]], [1.5], [True], [None],
                                              ["../../etc/passwd"], ["/etc/passwd"],
                                              ["a"] * 10_000, ["\x00"], [{"a": 1}], [2**70],
                                              [-1], ["\ud800"]]))
    return f"path := {_short(entry['path'])}"


def a_checksum(doc: Doc, rng) -> str:
    entries = doc.index["leaves"]
    target = rng.choice([e for e in entries if "pack" not in e] + doc.index["packs"])
    other = rng.choice([e for e in entries if "pack" not in e])
    target["checksum"] = rng.choice([None, 5, [], "", "xxh3_64:", "md5:abc", True,
                                     "xxh3_64:" + "0" * 16, other["checksum"]])
    return f"checksum := {_short(target['checksum'])}"


def a_files(doc: Doc, rng) -> str | tuple[str, str]:
    files = doc.top["files"]
    index = files["state.h5"]
    secret_h5 = str(doc.corpus.secret_h5)
    rel_secret = "../../../../outside/secret.h5"
    variants = [
        {"../../etc/passwd": index}, {"/etc/passwd": index}, {secret_h5: index},
        {rel_secret: index}, {"state.h5": rel_secret}, {"state.h5": secret_h5},
        {"state.h5": index, rel_secret: index, "/etc/passwd": index},
        {"state.h5/" + rel_secret: index}, {"": index}, {".": index}, {"state.h5\x00": index},
        [index], "state.h5", None, {"state.h5": [index]}, {"state.h5": None},
        {"STATE.H5": index}, {"./state.h5": index},
    ]
    doc.top["files"] = copy.deepcopy(rng.choice(variants))
    note = f"files := {_short(list(doc.top['files']) if isinstance(doc.top['files'], dict) else doc.top['files'])}"  # noqa: E501
    if rng.random() < 0.3:
        return note + " (state.h5 removed)", "remove-state"
    return note


def a_manifest(doc: Doc, rng) -> str:
    key = rng.choice(["format", "version", "step", "time", "metrics", "metadata", "retention",
                      "versions", "step", "version"])
    if rng.random() < 0.2:
        doc.top.pop(key, None)
        return f"manifest del {key}"
    value = copy.deepcopy(rng.choice(HOSTILE + [1.0, "1", 2, -1, "ckpt"]))
    if key == "metadata" and rng.random() < 0.3:
        value = doc.placeholder("[" * 50_000 + "]" * 50_000)
    doc.top[key] = value
    return f"manifest {key} := {_short(value)}"


STRUCTURED = [(a_field, 6), (a_retype, 3), (a_shape, 4), (a_dtype, 4), (a_offset, 3),
              (a_pack, 4), (a_packs, 2), (a_kind, 4), (a_tree, 4), (a_deep, 2),
              (a_mismatch, 2), (a_top, 2), (a_path, 1), (a_checksum, 1), (a_amplify, 0.3)]
MANIFEST_ONLY = [(a_files, 2), (a_manifest, 2)]


def a_record(doc: Doc, rng) -> str:
    """Format 2: the manifest's record of state.h5 (its size and index checksum)."""
    record = doc.top["files"]["state.h5"]
    key = rng.choice(["nbytes", "index_checksum"])
    value = copy.deepcopy(rng.choice(HOSTILE + [doc.file_size - 1, doc.file_size + 1,
                                                "xxh3_64:" + "0" * 16]))
    if rng.random() < 0.2:
        record.pop(key)
        return f"record del {key}"
    record[key] = value
    return f"record {key} := {_short(value)}"

NUMBER = re.compile(rb"(?<=[:\[,])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?=[,\]}])")


def raw_attack(text: bytes, rng) -> tuple[bytes, str]:
    how = rng.choice(["number", "number", "deep", "bom", "utf16", "badutf8", "nul",
                      "truncate", "dupkey", "control", "surrogate"])
    if how in ("number", "deep"):
        spots = list(NUMBER.finditer(text))
        spot = rng.choice(spots)
        if how == "number":
            new = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999",
                              b"9" * 5000, b"9" * 4300, b"1" + b"0" * 400, b"-0", b"0.0",
                              b"1E-400", b"12345678901234567890123", b"0x10", b"+1", b"01"])
        else:
            depth = rng.choice([100_000, 5000, 1000, 995, 600])
            new = b"[" * depth + b"]" * depth
        return text[:spot.start()] + new + text[spot.end():], f"raw {how} {new[:20]!r}"
    pos = rng.randrange(len(text))
    if how == "bom":
        return b"\xef\xbb\xbf" + text, "raw BOM"
    if how == "utf16":
        return text.decode().encode("utf-16"), "raw utf-16"
    if how == "badutf8":
        quote = text.find(b'"', pos)
        pos = quote + 1 if quote >= 0 else pos
        return text[:pos] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80"]) + text[pos:], \
            "raw invalid utf-8"
    if how == "nul":
        return text[:pos] + b"\x00" + text[pos:], "raw NUL"
    if how == "truncate":
        return text[:pos], f"raw truncate {pos}"
    if how == "dupkey":
        key = rng.choice([b'"step":2', b'"leaves":[]', b'"tree":0', b'"files":{}',
                          b'"format":"x"', b'"version":2'])
        return text[:-1] + b"," + key + b"}", f"raw duplicate key {key!r}"
    if how == "control":
        quote = text.find(b'"', pos)
        pos = quote + 1 if quote >= 0 else pos
        return text[:pos] + b"\n\t\x01" + text[pos:], "raw control chars in a string"
    quote = text.find(b'"', pos)
    pos = quote + 1 if quote >= 0 else pos
    return text[:pos] + b"\\ud800\\udfff\\udc00" + text[pos:], "raw escaped surrogates"


# ------------------------------------------------------------ single files


def split_single(data: bytes) -> tuple[dict, bytes, dict]:
    header, index_bytes = split_state(data)
    return header, index_bytes, json.loads(index_bytes)


def header_attack(data: bytes, rng) -> tuple[bytes, str]:
    header, index_bytes, _ = split_single(data)
    good = dict(header)
    size = len(data)
    how = rng.choice(["offset", "nbytes", "checksum", "whole", "deep", "raw"])
    if how == "offset":
        value = rng.choice([math.inf, -math.inf, math.nan, 1e400, "9" * 5000, 2**70, -1, 0,
                            "4096", [4096], True, None, {}, size, 4096, 4096.5])
        good["index_offset"] = value
    elif how == "nbytes":
        good["index_nbytes"] = rng.choice([math.inf, math.nan, 2**63, -1, size, 0, "1", None])
    elif how == "checksum":
        good["index_checksum"] = rng.choice([None, 5, [], "", h5format.checksum(b"")])
    elif how == "whole":
        text = rng.choice([b"[]", b'"x"', b"5", b"null", b"{}", b'{"version":1}', b"NaN"])
        return embed_index(data, b"", text)[:size], f"header := {text!r}"
    elif how == "deep":
        depth = rng.choice([4000, 2000, 1000])
        text = b'{"index_offset":' + b"[" * depth + b"]" * depth + b"}"
        return embed_index(data, b"", text)[:size], f"header deep {depth}"
    else:
        text = json.dumps(good).encode()
        pos = rng.randrange(len(text))
        text = text[:pos] + rng.choice([b"\xff", b"\x00", b"}", b"NaN", b"9" * 5000]) + text[pos:]
        return embed_index(data, b"", text)[:size], "header raw damage"
    text = json.dumps(good).encode()
    return embed_index(data, b"", text)[:size], f"header {how} := {_short(good.get('index_' + how, good))}"  # noqa: E501


# ------------------------------------------------------------ HDF5 attacks


def _h5_attack(path: Path, corpus: Corpus, name: str) -> None:
    secret_h5, secret_txt = str(corpus.secret_h5), str(corpus.secret_txt)
    rel_h5 = os.path.relpath(secret_h5, path.parent)
    rel_txt = os.path.relpath(secret_txt, path.parent)
    with h5py.File(path, "w") as f:
        f["ok"] = np.arange(10)
        if name == "external-link-abs":
            f["leak"] = h5py.ExternalLink(secret_h5, "/d")
        elif name == "external-link-rel":
            f["g/leak"] = h5py.ExternalLink(rel_h5, "/g")
        elif name == "external-link-passwd":
            f["leak"] = h5py.ExternalLink("/etc/passwd", "/")
        elif name == "external-storage-abs":
            f.create_dataset("leak", shape=(600,), dtype="u1", external=[(secret_txt, 0, 600)])
        elif name == "external-storage-rel":
            f.create_dataset("leak", shape=(600,), dtype="S1", external=[(rel_txt, 0, 600)])
        elif name == "virtual-dataset":
            layout = h5py.VirtualLayout(shape=(100,), dtype="u1")
            layout[:] = h5py.VirtualSource(secret_h5, "d", shape=(100,))
            f.create_virtual_dataset("leak", layout)
        elif name == "hard-link-cycle":
            g = f.create_group("a/b")
            g["up"] = f["a"]
        elif name == "root-cycle":
            f["a/root"] = f["/"]
        elif name == "soft-link-cycle":
            f["a/up"] = h5py.SoftLink("/a")
        elif name == "soft-link-self":
            f["self"] = h5py.SoftLink("/self")
        elif name == "dangling-soft-link":
            f["dangle"] = h5py.SoftLink("/nowhere")
        elif name == "deep-groups":
            f.create_group("/".join(["g"] * 2000))
        elif name == "fill-value-bomb":
            f.create_dataset("huge", shape=(2**40,), dtype="u1")
        elif name == "fill-value-bomb-chunked":
            f.create_dataset("huge", shape=(2**62,), dtype="u1", chunks=(2**20,))
        elif name == "fill-value-2GiB":
            f.create_dataset("huge", shape=(2**31 + 10,), dtype="u1", fillvalue=7)
        elif name == "hard-link-amplify":
            f["big"] = np.ones(2**18, "f8")  # 2 MiB
            for i in range(1600):
                f[f"copies/{i}"] = f["big"]
        elif name == "object-references":
            f["refs"] = np.array([f["ok"].ref, f["ok"].ref], dtype=h5py.ref_dtype)
            f["regions"] = f["ok"].regionref[2:5]
        elif name == "odd-types":
            f["enum"] = np.array([0, 1], dtype=h5py.enum_dtype({"a": 0, "b": 1}, basetype="i1"))
            f["opaque"] = np.void(b"\x00\x01\x02")
            f["array"] = np.zeros(2, dtype=np.dtype(("f4", (3,))))
            f.create_dataset("vlen_bytes", data=[b"a", b"bc"], dtype=h5py.vlen_dtype(bytes))
            f.create_dataset("compound_vlen", shape=(1,), dtype=np.dtype(
                [("s", h5py.string_dtype()), ("v", h5py.vlen_dtype(np.int8))]))
            f["bool"] = np.array([True, False])
            f["complex"] = np.array([1 + 2j])
        elif name == "huge-string":
            f.create_dataset("s", shape=(), dtype=h5py.string_dtype(length=2**30))
        else:
            raise AssertionError(name)


H5_ATTACKS = ["external-link-abs", "external-link-rel", "external-link-passwd",
              "external-storage-abs", "external-storage-rel", "virtual-dataset",
              "hard-link-cycle", "root-cycle", "soft-link-cycle", "soft-link-self",
              "dangling-soft-link", "deep-groups", "fill-value-bomb", "fill-value-bomb-chunked",
              "fill-value-2GiB", "hard-link-amplify", "object-references", "odd-types",
              "huge-string"]


# ---------------------------------------------------------------- cases

FS_ATTACKS = ["manifest-missing", "state-missing", "state-empty", "manifest-empty",
              "manifest-dir", "state-dir", "manifest-fifo", "state-fifo", "state-devzero",
              "manifest-devzero", "manifest-huge-whitespace"]
# "state-loop" and "manifest-loop" (symlink loops) fail in manager.py: test_known_issues
SINGLE_FS_ATTACKS = ["fifo", "dir", "devzero", "empty", "loop"]


def _manager_case(case: Path, corpus: Corpus, state: bytes, manifest: bytes,
                  fs: str | None = None) -> None:
    step = case / "ckpt" / "step_1"
    step.mkdir(parents=True)
    (step / "state.h5").write_bytes(state)
    (step / "manifest.json").write_bytes(manifest)
    if fs is None:
        return
    what, _, how = fs.partition("-")
    target = step / ("manifest.json" if what == "manifest" else "state.h5")
    if how in ("missing", "dir", "fifo", "devzero", "loop"):
        target.unlink()
    if how == "loop":
        target.symlink_to(target.name)
    elif how == "dir":
        target.mkdir()
    elif how == "fifo":
        os.mkfifo(target)
    elif how == "devzero":
        target.symlink_to("/dev/zero")
    elif how == "empty":
        target.write_bytes(b"")
    elif how == "huge-whitespace":
        target.write_bytes(manifest[:-1] + b" " * (64 * 1024**2) + b"}")


def build_case(i: int, case: Path, corpus: Corpus) -> dict:
    """Write case ``i`` into ``case``; returns its spec (api, description...)."""
    rng = random.Random(f"{SEED}-{i}")
    case.mkdir()
    named = NAMED[i] if i < len(NAMED) and not FAMILY else None
    family = named[0] if named else FAMILY or rng.choices(
        ["state-bytes", "manifest-bytes", "manifest-json", "manifest-raw", "single-bytes",
         "single-json", "single-raw", "single-header", "foreign-bytes", "foreign-attack",
         "index-json", "manifest2-json"],
        weights=[10, 8, 20, 6, 9, 10, 3, 4, 10, 4, 18, 6])[0]
    spec: dict = {"family": family, "verify": rng.random() > 0.08}
    if family in ("state-bytes", "manifest-bytes", "manifest-json", "manifest-raw", "fs",
                  "index-json", "manifest2-json"):
        spec["api"] = "restore"
        spec["step"] = rng.choice([None, 1])
        if rng.random() < 0.15:
            spec["into"] = rng.random() < 0.5  # restore into a template; the value: strict
        if rng.random() < 0.1:
            spec["keys"] = rng.choice(["model", ["opt", "state"], [["opt", "state"], "rng"],
                                       [0], "history", ["keys", 0]])
    else:
        spec["api"] = "load_metadata" if rng.random() < 0.05 else "load"
        spec["file"] = "file.h5"
        if rng.random() < 0.1:
            spec["keys"] = rng.choice(["model", ["model_weights", "dense"], "names", "nope"])

    state, manifest = corpus.state_h5, corpus.manifest
    if family == "state-bytes":
        hot = [(0, 600), (4096, 8192), (len(state) - 4096, len(state))]
        state, spec["desc"] = mutate_bytes(state, rng, hot)
        _manager_case(case, corpus, state, manifest)
    elif family == "manifest-bytes":
        manifest, spec["desc"] = mutate_bytes(manifest, rng, [(0, 400)])
        _manager_case(case, corpus, state, manifest)
    elif family == "manifest-raw":
        manifest, spec["desc"] = raw_attack(manifest, rng)
        _manager_case(case, corpus, state, manifest)
    elif family == "index-json":  # format 2: the index lives in state.h5
        _, index_bytes, index = split_single(state)
        doc = Doc(index, index, len(state), corpus, manifest=False)
        attack = named[1] if named else rng.choices(*zip(*STRUCTURED))[0]
        spec["desc"] = f"{attack.__name__}: {attack(doc, rng)}"
        state = embed_index(state, doc.dumps())
        if rng.random() < 0.85:  # the manifest vouches for the damage: the deeper checks
            manifest = authenticate(case, state, manifest)
            spec["desc"] += " (authenticated)"
        _manager_case(case, corpus, state, manifest)
    elif family == "manifest2-json":
        top = json.loads(manifest)
        doc = Doc(top, top["files"]["state.h5"], len(state), corpus, manifest=True)
        attack = rng.choices(*zip(*(MANIFEST_ONLY + [(a_record, 3)])))[0]
        note = attack(doc, rng)
        note, fs = note if isinstance(note, tuple) else (note, None)
        spec["desc"] = f"{attack.__name__}: {note}"
        _manager_case(case, corpus, state, doc.dumps())
        if fs == "remove-state":
            (case / "ckpt" / "step_1" / "state.h5").unlink()
    elif family == "manifest-json":  # format 1: the index repeated in the manifest
        top = json.loads(corpus.manifest_v1)
        doc = Doc(top, top["files"]["state.h5"], len(state), corpus, manifest=True)
        attack = named[1] if named else rng.choices(
            *zip(*(STRUCTURED + MANIFEST_ONLY)))[0]
        note = attack(doc, rng)
        fs = None
        if isinstance(note, tuple):
            note, fs = note
        spec["desc"] = f"{attack.__name__}: {note}"
        _manager_case(case, corpus, state, doc.dumps())
        if fs == "remove-state":
            (case / "ckpt" / "step_1" / "state.h5").unlink()
    elif family == "fs":
        spec["desc"] = named[1]
        _manager_case(case, corpus, state, manifest, fs=named[1])
    elif family == "single-fs":
        spec["desc"] = named[1]
        target = case / "file.h5"
        if named[1] == "fifo":
            os.mkfifo(target)
        elif named[1] == "dir":
            target.mkdir()
        elif named[1] == "devzero":
            target.symlink_to("/dev/zero")
        elif named[1] == "loop":
            target.symlink_to(target.name)
        else:
            target.write_bytes(b"")
    elif family == "single-bytes":
        _, index_bytes, _ = split_single(corpus.single)
        start = split_single(corpus.single)[0]["index_offset"]
        hot = [(0, 600), (4096, 8192), (start, start + len(index_bytes))]
        data, spec["desc"] = mutate_bytes(corpus.single, rng, hot)
        (case / "file.h5").write_bytes(data)
    elif family in ("single-json", "single-raw"):
        _, index_bytes, index = split_single(corpus.single)
        if family == "single-raw":
            new, spec["desc"] = raw_attack(index_bytes, rng)
        else:
            doc = Doc(index, index, len(corpus.single), corpus, manifest=False)
            attack = named[1] if named else rng.choices(*zip(*STRUCTURED))[0]
            spec["desc"] = f"{attack.__name__}: {attack(doc, rng)}"
            new = doc.dumps()
        (case / "file.h5").write_bytes(embed_index(corpus.single, new))
    elif family == "single-header":
        data, spec["desc"] = header_attack(corpus.single, rng)
        (case / "file.h5").write_bytes(data)
    elif family == "foreign-bytes":
        source = corpus.keras if rng.random() < 0.85 else corpus.bomb
        hot = [(0, 4096), (len(source) - 8192, len(source))]
        data, spec["desc"] = mutate_bytes(source, rng, hot)
        (case / "file.h5").write_bytes(data)
    elif family == "foreign-attack":
        name = named[1] if named else rng.choice(H5_ATTACKS + ["bomb"])
        spec["desc"] = name
        if name == "bomb":
            (case / "file.h5").write_bytes(corpus.bomb)
        else:
            _h5_attack(case / "file.h5", corpus, name)
    else:
        raise AssertionError(family)
    return spec


# Every named attack runs once per run, before the random ones.
NAMED = (
    [("manifest-json", a) for a in (a_files,) * 6 + (a_amplify,) * 4 + (a_deep,) * 6]
    + [("single-json", a) for a in (a_amplify,) * 2 + (a_deep,) * 3]
    + [("fs", name) for name in FS_ATTACKS]
    + [("single-fs", name) for name in SINGLE_FS_ATTACKS]
    + [("foreign-attack", name) for name in H5_ATTACKS + ["bomb"]]
)


def _selected() -> list[int]:
    only = os.environ.get("CKPT_FUZZ_CASES")
    if only:
        return [int(x) for x in only.split(",") if x.strip()]
    return list(range(max(CASES, len(NAMED))))


def _summary(results: dict, specs: dict) -> str:
    counts = Counter(r["outcome"] for r in results.values())
    errors = Counter(r.get("type") for r in results.values() if r["outcome"] == "error")
    families = Counter(specs[c]["family"] for c in results)
    return (f"{len(results)} cases: {dict(counts)}; errors {dict(errors)}; "
            f"families {dict(families)}")


# ------------------------------------------------------------------ tests


def test_pristine_files_restore(corpus, tmp_path):
    """The unmutated corpus restores: mutations, not the harness, cause the errors."""
    _manager_case(tmp_path / "m", corpus, corpus.state_h5, corpus.manifest)
    restored = ckpt.CheckpointManager(tmp_path / "m" / "ckpt").restore()
    assert restored["rng"]["seed"] == 2**70 + 12345
    (tmp_path / "single.ckpt").write_bytes(corpus.single)
    assert ckpt.load(tmp_path / "single.ckpt")["keys"][0] == "int key"
    (tmp_path / "keras.h5").write_bytes(corpus.keras)
    keras = ckpt.load(tmp_path / "keras.h5")
    assert keras["model_weights"]["dense"]["dense"]["kernel:0"].shape == (128, 128)
    # the re-embedding used by the single-file JSON attacks keeps a file valid
    _, index_bytes, _ = split_single(corpus.single)
    (tmp_path / "re.ckpt").write_bytes(embed_index(corpus.single, index_bytes))
    assert ckpt.load(tmp_path / "re.ckpt")["text"] == corpus.state["text"]


def run_fuzz(selected: list[int], build, corpus: Corpus, root: Path) -> None:
    """Build and run every case in ``selected``; fail on any outcome but tree or error."""
    cases_root = root / "cases"
    cases_root.mkdir(parents=True)
    outside_before = _snapshot(corpus.outside)
    results: dict[str, Result] = {}
    specs: dict[str, dict] = {}
    for start in range(0, len(selected), CHUNK):
        chunk = selected[start:start + CHUNK]
        jobs, snapshots = [], {}
        for i in chunk:
            cid = f"c{i:05d}"
            case = cases_root / cid
            specs[cid] = build(i, case, corpus)
            (cases_root / f"{cid}.spec.json").write_text(json.dumps(specs[cid]))
            snapshots[cid] = _snapshot(case)
            jobs.append((cid, str(case)))
        expected = set(os.listdir(cases_root))
        shards = [jobs[k::WORKERS] for k in range(WORKERS)]
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [pool.submit(_run_shard, shard, root, snapshots, f"{start}-{k}")
                       for k, shard in enumerate(shards) if shard]
            for future in futures:
                results.update(future.result())
        extra = set(os.listdir(cases_root)) ^ expected
        assert not extra, f"files appeared next to the case directories: {sorted(extra)}"
        for cid, _ in jobs:  # keep failing cases for inspection, free the rest
            if results.get(cid, {}).get("outcome") in ("tree", "error"):
                shutil.rmtree(cases_root / cid)
    assert _changed(outside_before) == [], "files outside the cases changed"
    summary = _summary(results, specs)
    print(summary)
    (root / "summary.json").write_text(json.dumps(
        {"summary": summary, "results": results, "specs": specs}, default=str, indent=1))
    missing = [c for c in specs if c not in results]
    bad = {c: r for c, r in results.items() if r["outcome"] not in ("tree", "error")}
    lines = [f"{c} [{specs[c]['family']}: {specs[c].get('desc')}] {r['outcome']} "
             f"{r.get('type')}: {r.get('detail', '')[-600:]}" for c, r in sorted(bad.items())]
    assert not missing, f"cases without a result: {missing}"
    assert not bad, (f"{len(bad)} of {len(results)} cases failed ({summary}); reproduce one "
                     f"with CKPT_FUZZ_CASES=<n>:\n" + "\n\n".join(lines[:25]))


def test_fuzz_restore_and_load(corpus, tmp_path):
    run_fuzz(_selected(), build_case, corpus, tmp_path / "run")


ENTRY_POINTS = ("load", "show", "verify")


def _hdf5_hot(data: bytes) -> list[tuple[int, int]]:
    """Where an HDF5 file keeps its metadata: superblock, end, and each signed structure."""
    hot = [(0, 4096), (max(0, len(data) - 4096), len(data))]
    for signature in (b"TREE", b"SNOD", b"HEAP", b"GCOL", b"OHDR", b"BTHD", b"BTLF", b"BTIN",
                      b"FRHP", b"FHDB", b"FHIB", b"FSHD", b"EAHD", b"EADB", b"FAHD", b"FADB"):
        at = data.find(signature)
        while at >= 0:
            hot.append((at, at + 512))
            at = data.find(signature, at + 1)
    return hot


def build_plain_case(i: int, case: Path, corpus: Corpus) -> dict:
    """Case ``i``: a mutated plain HDF5 file for ``ckpt.load``, ``ckpt show`` or ``verify``.

    ``verify`` (and a quarter of ``show``) get a step directory whose ``state.h5`` is
    a mutated plain HDF5 file or a mutated ckpt state file (plain HDF5 with a header).
    """
    rng = random.Random(f"{SEED}-plain-{i}")
    case.mkdir()
    api = ENTRY_POINTS[i % len(ENTRY_POINTS)]
    as_step = api == "verify" or (api == "show" and rng.random() < 0.25)
    name = rng.choice(sorted(corpus.plain) + (["state.h5"] * 2 if as_step else []))
    source = corpus.state_h5 if name == "state.h5" else corpus.plain[name]
    data, desc = mutate_bytes(source, rng, _hdf5_hot(source))
    spec: dict = {"family": f"plain-{api}", "api": api, "verify": True,
                  "desc": f"{name}: {desc}"}
    if as_step:
        _manager_case(case, corpus, data, corpus.manifest)
        spec["file"] = "ckpt"
    else:
        (case / "file.h5").write_bytes(data)
        spec["file"] = "file.h5"
        if api == "load" and rng.random() < 0.1:
            spec["keys"] = rng.choice(["filtered", "model_weights", "layers", "compound"])
    return spec


def test_fuzz_plain_hdf5(corpus, tmp_path):
    """Mutated plain HDF5 files (chunked, filtered, compound, vlen, attribute-heavy, Keras)
    through ``ckpt.load``, ``ckpt show`` and ``ckpt verify``: errors, never crashes."""
    only = os.environ.get("CKPT_FUZZ_CASES")
    selected = ([int(x) for x in only.split(",") if x.strip()] if only
                else list(range(PLAIN_CASES * len(ENTRY_POINTS))))
    run_fuzz(selected, build_plain_case, corpus, tmp_path / "run")


def test_harness_attributes_every_misbehaviour(corpus, tmp_path):
    """Crashes, hangs, allocations, leaks and stray files are each pinned on their case."""
    hows = ["fine", "segfault", "fine", "hang", "allocate", "outside", "leak", "touch",
            "keyerror", "fine"]
    jobs, snapshots = [], {}
    for n, how in enumerate(hows):
        cid = f"s{n}"
        case = tmp_path / cid
        case.mkdir()
        spec = {"api": "selftest", "how": how, "file": str(corpus.secret_txt)}
        (tmp_path / f"{cid}.spec.json").write_text(json.dumps(spec))
        snapshots[cid] = _snapshot(case)
        jobs.append((cid, str(case)))
    results = _run_shard(jobs, tmp_path, snapshots, "self", timeout=5)
    outcomes = {cid: results[cid]["outcome"] for cid, _ in jobs}
    assert outcomes == {"s0": "tree", "s1": "crash", "s2": "tree", "s3": "hang", "s4": "FAIL",
                        "s5": "FAIL", "s6": "FAIL", "s7": "touched", "s8": "FAIL",
                        "s9": "tree"}, outcomes
    assert "MemoryError" in results["s4"]["type"]
    assert "outside the case" in results["s6"]["detail"]


TAG_AND_LINK_DAMAGE = {
    # damaged torch leaves: decode_tree turns the adapter's errors into
    # CorruptCheckpointError naming the file and key
    "torch-unknown-dtype": ("torch", lambda e: e[0]["extra"].update(dtype="bogus")),
    "torch-storage-mismatch": ("torch", lambda e: e[0]["extra"].update(dtype="int32")),
    "torch-grad-on-int": ("torch", lambda e: e[1]["extra"].update(requires_grad=True)),
    # symlink loops in place of the data file or manifest: ELOOP must not escape
    "state-symlink-loop": ("loop", "state.h5"),
    "manifest-symlink-loop": ("loop", "manifest.json"),
}


@pytest.mark.parametrize("name", sorted(TAG_AND_LINK_DAMAGE))
def test_damaged_tags_and_symlink_loops_end_in_checkpoint_errors(name, tmp_path):
    what, damage = TAG_AND_LINK_DAMAGE[name]
    mgr = ckpt.CheckpointManager(tmp_path)
    if what == "torch":
        torch = pytest.importorskip("torch")
        mgr.save(1, [torch.arange(4, dtype=torch.float32), torch.arange(3)], force=True)
        # the manifest vouches for the damaged index: only the tag checks can catch it
        edit_index(tmp_path / "step_1", lambda index: damage(index["leaves"]))
    else:
        mgr.save(1, {"a": 1}, force=True)
        target = tmp_path / "step_1" / damage
        target.unlink()
        target.symlink_to(target.name)
    try:
        ckpt.CheckpointManager(tmp_path).restore(1)
    except ckpt.CheckpointError:
        pass
