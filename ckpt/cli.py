"""The ``ckpt`` command: ``ckpt --version``, ``ckpt --help`` and the subcommands.

Each subcommand is registered by one small ``_add_<name>`` function that sets
``run=`` on its parser; the work is done by :mod:`ckpt.inspection` and
:mod:`ckpt.export`, and only this module prints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ckpt import inspection
from ckpt._version import __version__
from ckpt.errors import CheckpointError
from ckpt.policies import Policy, metric_direction

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


class UsageError(Exception):
    """Arguments that parse but make no sense together; reported like any other error."""


class _Parser(argparse.ArgumentParser):
    """argparse reporting bad arguments like every other bad input: one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"ckpt: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = _Parser(
        prog="ckpt",
        description="Crash-safe, exact-resume training checkpoints in plain HDF5.",
        epilog="Run 'ckpt COMMAND --help' for a command's options. Exit status: 0 ok, "
               "1 verify found damage, 2 bad input (one 'ckpt: error:' line on stderr), "
               "130/143 demo interrupted by SIGINT/SIGTERM (after saving).",
    )
    parser.add_argument("--version", action="version", version=f"ckpt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in (_add_demo, _add_ls, _add_show, _add_verify, _add_prune, _add_diff,
                     _add_export):
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ckpt`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a command is required: say which there are, as bad input
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # e.g. `ckpt ls DIR | head`: stop quietly
        _silence_stdout()
        return EXIT_FAILED
    except (CheckpointError, UsageError, OSError) as error:
        print(f"ckpt: error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at devnull so that fails quietly
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# ------------------------------------------------------------ arguments


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _positive(text: str) -> int:
    return _integer(text, 1)


def _add_demo(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="train the seed MLP with checkpoints; rerun to resume",
        description="Train the seed MLP (numpy) with checkpoints in DIR. Interrupt it "
                    "(Ctrl-C saves and stops) and run the same command again: it says "
                    "'resumed from step N' and continues exactly.")
    from ckpt.demo import run as demo_run  # numpy-only; imported when the parser is built

    demo_run.add_arguments(parser)
    parser.set_defaults(run=demo_run.main)


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of a table (default: a table)")


def _add_policy_args(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_argument_group(
        "retention policy", f"A step is kept if any option keeps it. Default: {default}.")
    group.add_argument("--keep-last", type=_positive, metavar="N",
                       help="keep the N newest checkpoints")
    group.add_argument("--keep-every", type=_positive, metavar="K",
                       help="keep every step divisible by K")
    group.add_argument("--keep-best", metavar="METRIC",
                       help="keep the checkpoint with the best value of METRIC")
    group.add_argument("--mode", choices=("auto", "min", "max"), default="auto",
                       help="with --keep-best: whether the best METRIC is the lowest or the "
                            "highest; auto infers it from the name (accuracy, auc, f1, "
                            "precision, recall... -> max; loss, error, mse... -> min) and "
                            "refuses a name that says neither (default: auto)")


def _policy(args: argparse.Namespace) -> Policy | None:
    if args.mode != "auto" and args.keep_best is None:
        raise UsageError("--mode only applies together with --keep-best METRIC")
    if (args.keep_best is not None and args.mode == "auto"
            and metric_direction(args.keep_best) is None):
        # never guess: a wrong direction would keep the worst checkpoint
        raise UsageError(f"--keep-best {args.keep_best}: the name does not say whether "
                         "higher or lower is better; pass --mode min or --mode max")
    return inspection.build_policy(keep_last=args.keep_last, keep_every=args.keep_every,
                                   keep_best=args.keep_best, mode=args.mode)


# -------------------------------------------------------------- formats


def human_size(nbytes: int) -> str:
    """``1536`` -> ``1.5 KiB`` (powers of 1024)."""
    if nbytes < 1024:
        return f"{nbytes} B"
    units = ("KiB", "MiB", "GiB", "TiB")
    size, power = nbytes / 1024, 0
    while size >= 1024 and power < len(units) - 1:
        size, power = size / 1024, power + 1
    return f"{size:.1f} {units[power]}"


def local_time(timestamp: float | None) -> str:
    """A Unix time as local ISO 8601 with its UTC offset, to the second."""
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp).astimezone()
    return moment.isoformat(timespec="seconds")


def _metrics_text(metrics: dict[str, Any]) -> str:
    parts = [f"{name}={value:.6g}" if isinstance(value, float) else f"{name}={value}"
             for name, value in metrics.items()]
    return " ".join(parts) or "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for row in (headers, *rows):
        cells = [str(cell).rjust(w) if i in right else str(cell).ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


# ------------------------------------------------------------------- ls


def _add_ls(commands: Any) -> None:
    parser = commands.add_parser(
        "ls", help="list the checkpoints in a directory",
        description="One row per checkpoint: step, local time saved, size on disk, metrics "
                    "and which retention policy would keep it, then a total line.",
        epilog="KEPT BY names the parts of a retention policy that keep each step (last, "
               "every, best), 'newest' for the newest step (never pruned) and '(prune)' "
               "for a step none keeps. The policy is the one the newest checkpoint was "
               "saved under (each manifest records it), or the --keep-* options when "
               "given; '-' when neither is known.")
    parser.add_argument("directory", metavar="DIR", help="checkpoint directory")
    _add_policy_args(parser, "the policy the newest checkpoint was saved under (recorded "
                             "in its manifest)")
    _add_json(parser)
    parser.set_defaults(run=_run_ls)


def _run_ls(args: argparse.Namespace) -> int:
    rows = inspection.list_steps(args.directory, _policy(args))
    if args.json:
        _print_json([_step_json(row) for row in rows])
        return EXIT_OK
    valid = [row for row in rows if row.error is None]
    _table(("STEP", "SAVED", "SIZE", "METRICS", "KEPT BY"),
           [(row.step, local_time(row.time), human_size(row.nbytes), _metrics_text(row.metrics),
             _kept_text(row.kept_by)) for row in valid], right={0, 2})
    print(f"{_plural(len(valid), 'checkpoint')}, {human_size(sum(r.nbytes for r in valid))}")
    for row in rows:
        if row.error is not None:
            print(f"note: {row.path} is not a valid checkpoint ({row.error}); "
                  "run 'ckpt verify' for details")
    return EXIT_OK


def _kept_text(kept_by: tuple[str, ...] | None) -> str:
    if kept_by is None:
        return "-"
    return ",".join(kept_by) or "(prune)"


def _step_json(row: inspection.StepRow) -> dict[str, Any]:
    return {"step": row.step, "path": row.path, "valid": row.error is None,
            "time": row.time, "saved": local_time(row.time) if row.time is not None else None,
            "nbytes": row.nbytes, "metrics": row.metrics,
            "kept_by": list(row.kept_by) if row.kept_by is not None else None,
            "error": row.error}


# ----------------------------------------------------------------- show


def _add_show(commands: Any) -> None:
    parser = commands.add_parser(
        "show", help="show the tree of a checkpoint or HDF5 file",
        description="Show every leaf (key path, type, dtype, shape, size) with the metrics "
                    "and user metadata of one step (the latest when STEP is omitted), of a "
                    "file written by ckpt.save, or of any HDF5 file (datasets and root "
                    "attributes; no data is read).")
    parser.add_argument("path", metavar="DIR|FILE",
                        help="checkpoint directory, step_<N> directory or HDF5 file")
    parser.add_argument("step", metavar="STEP", nargs="?", type=_non_negative,
                        help="step to show (default: latest)")
    _add_json(parser)
    parser.set_defaults(run=_run_show)


def _run_show(args: argparse.Namespace) -> int:
    found = inspection.describe(args.path, args.step)
    if args.json:
        _print_json(_description_json(found))
        return EXIT_OK
    print(_description_title(found))
    if found.metrics:
        print(f"metrics: {_metrics_text(found.metrics)}")
    for line in _metadata_lines(found.metadata, "attributes" if found.format in ("hdf5", "keras")
                                else "metadata"):
        print(line)
    for line in _sharing_lines(found):
        print(line)
    shared = bool(found.shared)
    _table(("KEY", "TYPE", "DTYPE", "SHAPE", "SIZE") + (("SHARED",) if shared else ()),
           [(leaf.key, leaf.kind, leaf.dtype or "-", _shape_text(leaf.shape),
             human_size(leaf.nbytes))
            + ((f"step {leaf.shared_from}" if leaf.shared_from is not None else "-",)
               if shared else ())
            for leaf in found.leaves], right={4})
    total = sum(leaf.nbytes for leaf in found.leaves)
    noun = ("dataset", None) if found.format in ("hdf5", "keras") else ("leaf", "leaves")
    print(f"{_plural(len(found.leaves), *noun)}, {human_size(total)} of data")
    return EXIT_OK


def _sharing_lines(found: inspection.Description) -> list[str]:
    """What an incremental step shares with earlier steps, and what its save wrote."""
    if not found.shared:
        return []
    lines = [f"shared with step {part.step}: {_plural(part.leaves, 'leaf', 'leaves')}, "
             f"{human_size(part.nbytes)} (hard link {part.file})" for part in found.shared]
    return lines + [f"written: {human_size(found.written_nbytes or 0)} (state.h5)"]


def _description_title(found: inspection.Description) -> str:
    size = human_size(found.nbytes)
    if found.format == "ckpt-step":
        return f"step {found.step} in {found.source} (saved {local_time(found.time)}, {size})"
    kind = {"ckpt-file": "ckpt file", "keras": "Keras archive"}.get(found.format,
                                                                    "plain HDF5 file")
    return f"{found.source} ({kind}, {size})"


def _metadata_lines(metadata: Any, label: str, width: int = 100) -> list[str]:
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return [f"{label}: {_clip(json.dumps(metadata, default=str), width)}"]
    return [f"{label}:"] + [f"  {name}: {_clip(json.dumps(value, default=str), width)}"
                            for name, value in metadata.items()]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else str(tuple(shape))


def _description_json(found: inspection.Description) -> dict[str, Any]:
    return {"source": found.source, "format": found.format, "step": found.step,
            "time": found.time, "saved": local_time(found.time) if found.time is not None else None,
            "nbytes": found.nbytes, "metrics": found.metrics, "metadata": found.metadata,
            **_sharing_json(found),
            "leaves": [{"key": leaf.key, "path": list(leaf.path), "kind": leaf.kind,
                        "dtype": leaf.dtype, "nbytes": leaf.nbytes,
                        "shape": list(leaf.shape) if leaf.shape is not None else None,
                        **({"shared_from": leaf.shared_from}
                           if leaf.shared_from is not None else {})}
                       for leaf in found.leaves]}


def _sharing_json(found: inspection.Description) -> dict[str, Any]:
    """An incremental step's ``shared`` files and ``written_nbytes`` (only for one that
    shares: the output of every other step stays as it was)."""
    if not found.shared:
        return {}
    return {"written_nbytes": found.written_nbytes,
            "shared": [{"step": part.step, "file": part.file, "leaves": part.leaves,
                        "nbytes": part.nbytes} for part in found.shared]}


# --------------------------------------------------------------- verify


def _add_verify(commands: Any) -> None:
    parser = commands.add_parser(
        "verify", help="check every checksum of one step or all of them",
        description="Read every leaf of STEP (every step directory when omitted) and check "
                    "its checksum; print one OK or FAILED line per step. A step directory "
                    "without a valid manifest fails. Exit status 0 when all are intact, 1 "
                    "when any is not.")
    parser.add_argument("directory", metavar="DIR", help="checkpoint or step_<N> directory")
    parser.add_argument("step", metavar="STEP", nargs="?", type=_non_negative,
                        help="step to verify (default: all)")
    parser.set_defaults(run=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    checked = failed = 0
    for result in inspection.verify(args.directory, args.step):
        checked += 1
        if result.ok:
            print(f"step {result.step}: OK ({_plural(result.leaves, 'leaf', 'leaves')}, "
                  f"{human_size(result.nbytes)})")
        else:
            failed += 1
            print(f"step {result.step}: FAILED: {_one_line(result.error)}")
    if failed:
        print(f"{failed} of {_plural(checked, 'checkpoint')} FAILED")
        return EXIT_FAILED
    print(f"{_plural(checked, 'checkpoint')} intact" if checked else "no checkpoints to verify")
    return EXIT_OK


# ---------------------------------------------------------------- prune


def _add_prune(commands: Any) -> None:
    parser = commands.add_parser(
        "prune", help="delete the checkpoints a retention policy does not keep",
        description="Delete every checkpoint that none of the --keep-* options keeps (the "
                    "newest is never deleted), under the directory's writer lock, the way "
                    "CheckpointManager prunes. Step directories without a valid manifest "
                    "are left alone.")
    parser.add_argument("directory", metavar="DIR", help="checkpoint directory")
    _add_policy_args(parser, "none; at least one --keep-* option is required")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be deleted and delete nothing "
                             "(default: delete)")
    parser.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="wait this long for a writer that holds the lock (default: 60)")
    parser.set_defaults(run=_run_prune)


def _run_prune(args: argparse.Namespace) -> int:
    policy = _policy(args)
    if policy is None:
        raise UsageError("prune needs at least one of --keep-last, --keep-every, --keep-best")
    result = inspection.prune(args.directory, policy, dry_run=args.dry_run,
                              lock_timeout=args.lock_timeout)
    verb = "would delete" if result.dry_run else "deleted"
    for row in result.deleted:
        print(f"{verb} step {row.step} ({human_size(row.nbytes)})")
    freed = human_size(sum(row.nbytes for row in result.deleted))
    total = len(result.deleted) + len(result.kept)
    kept = ", ".join(str(step) for step in result.kept) or "none"
    print(f"{verb} {len(result.deleted)} of {_plural(total, 'checkpoint')} ({freed}); "
          f"kept steps: {kept}")
    return EXIT_OK


# ----------------------------------------------------------------- diff


def _add_diff(commands: Any) -> None:
    parser = commands.add_parser(
        "diff", help="compare two steps leaf by leaf",
        description="Compare steps A and B leaf by leaf: same, changed (with the maximum "
                    "absolute difference for numeric arrays of equal shape), only in A, "
                    "only in B; then a summary line. Exit status 0 whether or not they "
                    "differ.")
    parser.add_argument("directory", metavar="DIR", help="checkpoint directory")
    parser.add_argument("step_a", metavar="A", type=_non_negative, help="first step")
    parser.add_argument("step_b", metavar="B", type=_non_negative, help="second step")
    _add_json(parser)
    parser.set_defaults(run=_run_diff)


def _run_diff(args: argparse.Namespace) -> int:
    diffs = inspection.diff_steps(args.directory, args.step_a, args.step_b)
    if args.json:
        _print_json([{"key": d.key, "path": list(d.path), "status": d.status,
                      "detail": d.detail, "max_abs_diff": d.max_abs_diff} for d in diffs])
        return EXIT_OK
    names = {"same": "same", "changed": "changed", "only_a": f"only in {args.step_a}",
             "only_b": f"only in {args.step_b}"}
    _table(("STATUS", "KEY", "DETAIL"),
           [(names[d.status], d.key, _diff_detail(d)) for d in diffs], right=set())
    counts = {status: sum(d.status == status for d in diffs) for status in names}
    print(", ".join(f"{count} {names[status]}" for status, count in counts.items()))
    return EXIT_OK


def _diff_detail(diff: inspection.LeafDiff) -> str:
    if diff.max_abs_diff is not None:
        return f"max abs diff {diff.max_abs_diff:.6g}"
    return diff.detail or ""


# --------------------------------------------------------------- export


def _add_export(commands: Any) -> None:
    parser = commands.add_parser(
        "export", help="write one step to .npz, .safetensors, .weights.h5 or .keras",
        description="Write the leaves of STEP to OUT, one array per leaf named by its key "
                    "path joined with '/' (int keys in decimal). The format follows OUT's "
                    "extension: .npz (numpy, never pickled), .safetensors (needs the "
                    "safetensors package), or Keras' .weights.h5 and .keras (need keras and "
                    "a checkpoint holding a Keras model's config, as BackupAndRestore "
                    "writes).",
        epilog="Python int/float/bool/complex leaves become 0-d arrays; str and bytes "
               "become uint8 arrays of their (UTF-8) bytes. None, ints beyond int64, torch "
               "dtypes numpy lacks (bfloat16) and, for .safetensors, dtypes it cannot hold "
               "(complex, datetime, strings) are skipped with a note.")
    parser.add_argument("directory", metavar="DIR", help="checkpoint directory")
    parser.add_argument("step", metavar="STEP", type=_non_negative, help="step to export")
    parser.add_argument("out", metavar="OUT",
                        help="output file: .npz, .safetensors, .weights.h5 or .keras")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ckpt.export import export_step

    result = export_step(args.directory, args.step, args.out)
    print(f"exported {_plural(result.arrays, 'array')} ({human_size(result.nbytes)}) "
          f"of step {args.step} to {result.out}")
    for note in result.notes:
        print(f"note: {note}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
