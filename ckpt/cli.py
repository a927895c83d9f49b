"""The ``ckpt`` command: ``ckpt --version``, ``ckpt --help`` and the subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ckpt._version import __version__

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ckpt",
        description="Crash-safe, exact-resume training checkpoints in plain HDF5.",
    )
    parser.add_argument("--version", action="version", version=f"ckpt {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ckpt`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
