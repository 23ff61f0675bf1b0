"""edgec doctor: run every target's tools on a one-line program and say what is missing."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from toolchain.errors import EdgecError, ToolMissingError
from toolchain.targets import backend_for, devices


def register_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check that each target's tools work (one-line programs)")
    p.add_argument("targets", nargs="*", metavar="TARGET", help="targets to check (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(func=cmd_doctor, command_parser=p)


def check(names: list[str] | None = None) -> dict[str, list[str]]:
    """Problems per target name (an empty list: the target's tools work)."""
    found = devices()
    result: dict[str, list[str]] = {}
    for name in names or list(found):
        if name not in found:
            result[name] = [f"{name}: unknown target; known: {', '.join(found)}"]
            continue
        dev = found[name]
        with tempfile.TemporaryDirectory(prefix="edgec-doctor-") as tmp:
            try:
                result[name] = backend_for(dev.family).check_tools(dev, Path(tmp))
            except (EdgecError, ImportError) as exc:
                result[name] = [f"{name}: {exc}"]
    return result


def cmd_doctor(args) -> int:
    result = check(args.targets)
    if args.json:
        print(json.dumps({n: {"ok": not p, "problems": p} for n, p in result.items()}, indent=2))
    else:
        for name, problems in result.items():
            if not problems:
                print(f"ok       {name}")
            for line in problems:
                print(f"missing  {line}")
    if any(result.values()):
        return ToolMissingError.exit_code
    return 0
