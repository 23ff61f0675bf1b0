"""edgec zoo / compress (being built; see issue 3)."""

from __future__ import annotations

from toolchain.errors import EdgecError


def register_zoo(sub) -> None:
    p = sub.add_parser("zoo", help="list the reference models (not yet available)")
    p.set_defaults(func=_unavailable, command_parser=p)


def register_compress(sub) -> None:
    p = sub.add_parser("compress", help="compress a model (not yet available)")
    p.set_defaults(func=_unavailable, command_parser=p)


def _unavailable(args) -> int:
    raise EdgecError(f"'edgec {args.command}' is not implemented yet")
