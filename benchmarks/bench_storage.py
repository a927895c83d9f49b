"""Save/restore of a 256 MiB state on an S3 server against plain s3fs, in one run.

The state is a few large float32 arrays and some small ones. ckpt saves it with a
``CheckpointManager`` on ``s3://`` (and ``ckpt.save`` of one object) and restores
it (every leaf verified against its checksum); the baseline uploads the same
bytes with s3fs's ``pipe_file`` and downloads them with ``cat_file`` (its own
concurrent multipart upload and chunked download, default settings). Variants run
in rotating order, ``--repeat`` times; figures are medians, ratios are baseline
time / variant time (above 1: faster than plain s3fs).

By default two local servers on 127.0.0.1 are measured in turn: moto (as the tests
use), which answers every ranged GET by reading the whole object, and localbucket,
which keeps objects as plain files and reads only the range asked for, as S3
does. ``--endpoint`` measures any other S3-compatible server (credentials from
the AWS_* variables).

    python benchmarks/bench_storage.py [--repeat 5] [--mib 256] [--endpoint URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _timing import timed  # noqa: E402 - benchmarks/ is on sys.path when run as a script

import ckpt  # noqa: E402 - after the path is set, for runs from a checkout
from ckpt.storage import transfer  # noqa: E402


def make_state(total_mib: int) -> dict:
    """Four large float32 arrays holding most of ``total_mib``, and 256 small leaves."""
    rng = np.random.default_rng(0)
    small = {f"small{i}": rng.standard_normal(1024 * (1 + i % 8), dtype=np.float32)
             for i in range(256)}  # 1..8 Ki elements: 4.5 MiB in all
    rest = total_mib * 2**20 - sum(a.nbytes for a in small.values())
    large = {f"layer{i}": rng.standard_normal(rest // 16, dtype=np.float32) for i in range(4)}
    return {"model": large, "opt": small, "step": 1}


def state_bytes(state: dict) -> bytes:
    """The state's array bytes, back to back: what the baseline uploads."""
    arrays = [*state["model"].values(), *state["opt"].values()]
    return b"".join(array.tobytes() for array in arrays)


class Bench:
    """One bucket; each variant writes under its own fresh key and deletes it after."""

    def __init__(self, options: dict, state: dict) -> None:
        import s3fs

        self.options, self.state = options, state
        self.fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        self.bucket = f"bench-{uuid.uuid4().hex[:8]}"
        self.fs.mkdir(self.bucket)
        self.blob = state_bytes(state)
        ckpt.storage.open_store(f"s3://{self.bucket}", options)

    def fresh(self) -> str:
        return f"{self.bucket}/{uuid.uuid4().hex[:8]}"

    def clean(self, path: str) -> None:
        # one DeleteObject per key: localbucket has no DeleteObjects (bulk delete)
        self.fs.invalidate_cache()
        for key in self.fs.find(path):
            self.fs.rm_file(key)

    # ------------------------------------------------------ variants

    def plain(self) -> tuple[float, float]:
        path = self.fresh()
        save = timed(lambda: self.fs.pipe_file(path, self.blob))
        load = timed(lambda: self.fs.cat_file(path))
        self.clean(path)
        return save, load

    def manager(self) -> tuple[float, float]:
        url = f"s3://{self.fresh()}"
        save = timed(lambda: ckpt.CheckpointManager(url, progress=False).save(1, self.state))
        load = timed(lambda: ckpt.CheckpointManager(url, progress=False).restore(1))
        self.clean(url)
        return save, load

    def single_file(self) -> tuple[float, float]:
        url = f"s3://{self.fresh()}/state.h5"
        save = timed(lambda: ckpt.save(url, self.state, progress=False))
        load = timed(lambda: ckpt.load(url, progress=False))
        self.clean(url)
        return save, load

    def one_leaf(self) -> tuple[float, float]:
        """A manager's restore of one large leaf (keys=): ranged reads of that leaf only."""
        url = f"s3://{self.fresh()}"
        save = timed(lambda: ckpt.CheckpointManager(url, progress=False).save(1, self.state))
        load = timed(lambda: ckpt.CheckpointManager(url, progress=False).restore(
            1, keys=[("model", "layer0")]))
        self.clean(url)
        return save, load


VARIANTS = {"s3fs pipe_file/cat_file": "plain", "CheckpointManager": "manager",
            "ckpt.save/load (URL)": "single_file", "manager, restore 1 leaf": "one_leaf"}


def measure(bench: Bench, repeat: int) -> dict[str, list[tuple[float, float]]]:
    names = list(VARIANTS)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for turn in range(repeat):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            runs[name].append(getattr(bench, VARIANTS[name])())
    return runs


def report(nbytes: int, runs: dict[str, list[tuple[float, float]]]) -> None:
    medians = {name: (statistics.median(s for s, _ in r), statistics.median(t for _, t in r))
               for name, r in runs.items()}
    base_save, base_load = medians["s3fs pipe_file/cat_file"]
    print(f"state: {nbytes / 2**20:.0f} MiB; PART_BYTES={transfer.PART_BYTES // 2**20} MiB, "
          f"READ_BYTES={transfer.READ_BYTES // 2**20} MiB, CONCURRENCY={transfer.CONCURRENCY}; "
          f"medians of {len(next(iter(runs.values())))}")
    print(f"{'variant':26} {'save s':>7} {'MB/s':>6} {'x s3fs':>6} "
          f"{'restore s':>9} {'MB/s':>6} {'x s3fs':>6}  (min save / restore)")
    for name, (save, load) in medians.items():
        fastest = min(s for s, _ in runs[name]), min(t for _, t in runs[name])
        print(f"{name:26} {save:7.2f} {nbytes / save / 1e6:6.0f} {base_save / save:6.2f} "
              f"{load:9.2f} {nbytes / load / 1e6:6.0f} {base_load / load:6.2f}  "
              f"({fastest[0]:.2f} / {fastest[1]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--endpoint", default=None,
                        help="an S3-compatible server to use (default: start moto locally)")
    parser.add_argument("--server", nargs="+", default=["moto", "localbucket"],
                        choices=["moto", "localbucket"],
                        help="local servers to start, one after another (moto answers a "
                             "ranged GET by reading the whole object; localbucket reads "
                             "only the range from a plain file)")
    parser.add_argument("--part-mib", type=int, default=transfer.PART_BYTES // 2**20,
                        help="ckpt's multipart part size (default: %(default)s)")
    parser.add_argument("--read-mib", type=int, default=transfer.READ_BYTES // 2**20,
                        help="ckpt's ranged-read size (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=transfer.CONCURRENCY,
                        help="ckpt's parts or ranged reads in flight (default: %(default)s)")
    parser.add_argument("--only", nargs="*", default=None, choices=list(VARIANTS.values()),
                        help="run only these variants (the baseline always runs)")
    args = parser.parse_args()
    transfer.PART_BYTES, transfer.READ_BYTES = args.part_mib * 2**20, args.read_mib * 2**20
    transfer.CONCURRENCY = args.concurrency
    if args.only is not None:
        for name, method in list(VARIANTS.items()):
            if method not in args.only and method != "plain":
                del VARIANTS[name]
    state = make_state(args.mib)
    nbytes = sum(a.nbytes for a in [*state["model"].values(), *state["opt"].values()])
    if args.endpoint:
        bench = Bench({"endpoint_url": args.endpoint}, state)
        report(nbytes, measure(bench, args.repeat))
        return
    from tests.s3_server import start_server

    for kind in args.server:
        with tempfile.TemporaryFile("w+") as log, \
                tempfile.TemporaryDirectory(prefix="bench-s3-") as data:
            server = start_server(log, kind, data)
            try:
                print(f"\n{kind} on 127.0.0.1")
                bench = Bench(server.options, state)
                report(nbytes, measure(bench, args.repeat))
            finally:
                server.process.kill()
                server.process.wait()


if __name__ == "__main__":
    main()
