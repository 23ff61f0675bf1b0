"""The ``edgec`` command line.

Every user mistake is an ``EdgecError``: printed as one line ``edgec: error: ...`` with a
non-zero exit code and no traceback. Commands live in small modules; this file only wires them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from toolchain import __version__
from toolchain.errors import EdgecError


def _build_parser() -> argparse.ArgumentParser:
    from toolchain import commands

    parser = argparse.ArgumentParser(
        prog="edgec",
        description="Compress, compile and verify neural networks for ARM CPUs and FPGAs.")
    parser.add_argument("--version", action="version", version=f"edgec {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v) or debug detail (-vv) to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in commands.REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="edgec: %(message)s")
    try:
        if getattr(args, "config", None):
            from toolchain.config import apply_defaults, load_table

            apply_defaults(args.command_parser, load_table(args.config, args.command), args.config)
            args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except EdgecError as exc:
        print(f"edgec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
