"""The ``edgec`` command line.

Every user mistake is an ``EdgecError``: printed as one line ``edgec: error: ...`` with a
non-zero exit code and no traceback. Commands live in small modules; this file only wires them,
and adds the options every command has:

- ``-q/--quiet``: nothing on stdout (not even a tool's output); errors still go to stderr;
- ``--json``: one JSON object on stdout, ``{"command", "ok", "exit_code", "error", "result",
  "stdout"}``, where ``result`` is what the command produced (the report, the comparison, the
  list) and ``stdout`` the lines it would have printed. Given before the command
  (``edgec --json verify OUT``); after it where the command has no ``--json`` of its own.

The exit codes (``EXIT_CODES``) are part of the interface and stay as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from toolchain import __version__, progress
from toolchain.errors import (ConfigError, EdgecError, ToolFailedError, ToolMissingError,
                              VerificationError)

INTERRUPTED = 130
BROKEN_PIPE_EXIT = 141
EXIT_CODES = {
    0: "ok",
    VerificationError.exit_code: "verification mismatch: outputs outside the tolerance (edgec "
                                 "check: a target does not take every node)",
    ConfigError.exit_code: "user error: a bad option, file or model (also argparse errors)",
    ToolMissingError.exit_code: "a tool is missing (cross compiler, qemu, g++, verilator)",
    ToolFailedError.exit_code: "a tool ran and failed",
    INTERRUPTED: "interrupted (Ctrl-C)",
    BROKEN_PIPE_EXIT: "the reader of stdout closed the pipe early (e.g. `| head`)",
}


def _global_options(parser: argparse.ArgumentParser, default=False) -> None:
    """--quiet and --json; on a command whose own --json exists (a flag or a path) only
    --quiet. ``default=SUPPRESS`` on the commands keeps a flag given before the command."""
    own = {s for a in parser._actions for s in a.option_strings}
    if "--quiet" not in own:
        parser.add_argument("-q", "--quiet", dest="global_quiet", action="store_true",
                            default=default, help="print nothing on stdout; errors still go "
                                                  "to stderr")
    if "--json" not in own:
        parser.add_argument("--json", dest="global_json", action="store_true",
                            default=default, help="print one JSON object on stdout: command, "
                                                  "ok, exit_code, error, result")


def _build_parser() -> argparse.ArgumentParser:
    from toolchain import commands

    parser = argparse.ArgumentParser(
        prog="edgec",
        description="Compress, compile and verify neural networks for ARM CPUs and FPGAs.",
        epilog="exit codes: " + "; ".join(f"{c} {w}" for c, w in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgec {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v) or debug detail (-vv) to stderr")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in commands.REGISTRY:
        register(sub)
    for command_parser in sub.choices.values():
        _global_options(command_parser, argparse.SUPPRESS)
    return parser


@contextlib.contextmanager
def _stdout_to(sink: io.StringIO | None) -> Iterator[None]:
    """Send stdout (Python's and file descriptor 1, which tools write to) into ``sink``, or
    nowhere if None; restore it afterwards."""
    sys.stdout.flush()
    with tempfile.TemporaryFile(mode="w+") as fd_file, contextlib.ExitStack() as stack:
        saved = os.dup(1)
        os.dup2(fd_file.fileno(), 1)
        try:
            stack.enter_context(contextlib.redirect_stdout(sink or io.StringIO()))
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            if sink is not None:
                fd_file.seek(0)
                sink.write(fd_file.read())


def _read_json(path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _result(args, text: str):
    """The machine-readable result of a command that ran (``--json``)."""
    if getattr(args, "result", None) is not None:  # the command says what it produced
        return args.result
    cmd = args.command
    if cmd == "compile" and args.output:
        return _read_json(Path(args.output) / "report.json")
    if cmd == "simulate":
        return _read_json(args.json or Path(args.out_dir) / "simulation.json")
    if cmd == "verify":
        outputs = _read_json(args.json) if args.json else None
        return {"ok": all(c.get("ok") for c in outputs), "outputs": outputs} if outputs else None
    if cmd == "compress" and args.output:
        return _read_json(Path(args.output).with_suffix(".json"))
    if getattr(args, "json", None) is True:  # targets, zoo, doctor, build print their JSON
        try:
            return json.loads(text)
        except ValueError:
            return None
    return None


def _run(parser, argv: list[str], args, verify_json: Path | None):
    """Run the command: (exit code, the one-line error or None, the options it ran with)."""
    try:
        if getattr(args, "config", None):
            from toolchain.config import apply_defaults, load_table

            apply_defaults(args.command_parser, load_table(args.config, args.command), args.config)
            args = _json_mode(_strip(parser.parse_args(argv)), verify_json)
        return int(args.func(args) or 0), None, args
    except EdgecError as exc:
        print(f"edgec: error: {exc}", file=sys.stderr)
        return exc.exit_code, str(exc), args
    except KeyboardInterrupt:
        print("edgec: interrupted", file=sys.stderr)
        return INTERRUPTED, "interrupted", args


def _strip(args):
    """The options without the global ones (the commands save their options in manifests)."""
    for key in ("global_quiet", "global_json"):
        vars(args).pop(key, None)
    return args


def _json_mode(args, verify_json: Path | None):
    """With --json, ask the commands for their JSON: the flag of targets/zoo/doctor/build, a
    comparison file for verify (a temporary one unless --json PATH was given)."""
    if verify_json is None:
        return args
    if getattr(args, "json", None) is False:
        args.json = True
    if args.command == "verify" and args.json is None:
        args.json = verify_json
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI. A reader that closes the pipe early (``edgec --json ... | head``) ends the
    command quietly with exit code 141 (128 + SIGPIPE), as a shell pipeline expects."""
    try:
        rc = _main(argv)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # Python would report the broken pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


def _main(argv: Sequence[str] | None) -> int:
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    quiet, as_json = bool(args.global_quiet), bool(args.global_json)
    progress.set_enabled(not (quiet or as_json))
    _strip(args)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=logging.ERROR if quiet and not args.verbose else level,
                        format="edgec: %(message)s")
    if not as_json and (not quiet or getattr(args, "json", None) is True):
        return _run(parser, argv, args, None)[0]  # --quiet with a command's --json: the JSON
    with tempfile.TemporaryDirectory(prefix="edgec-cli-") as tmp:
        verify_json = Path(tmp) / "verify.json" if as_json else None
        sink = io.StringIO() if as_json else None
        with _stdout_to(sink):
            rc, error, args = _run(parser, argv, _json_mode(args, verify_json), verify_json)
        if as_json:
            text = sink.getvalue()
            result = _result(args, text) if rc in (0, VerificationError.exit_code,
                                                   ToolMissingError.exit_code) else None
            own_json = getattr(args, "json", None) is True and result is not None
            print(json.dumps({"command": args.command, "ok": rc == 0, "exit_code": rc,
                              "error": error, "result": result,
                              "stdout": [] if own_json else text.splitlines()}, indent=2))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
