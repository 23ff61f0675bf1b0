"""Config files: a TOML table per command whose keys are that command's long option names.

Example ``edgec.toml``::

    [compile]
    target = "arm-a72"
    input_shape = ["input=1,3,224,224"]

Values from the file become the defaults of the command's options, so flags given on the
command line still win. Unknown keys are an error, listing the known ones.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from toolchain.errors import ConfigError


def load_table(path: Path, command: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get(command, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{command}] must be a table")
    return {k.replace("-", "_"): v for k, v in table.items()}


def apply_defaults(parser: argparse.ArgumentParser, table: dict[str, Any], path: Path) -> None:
    """Set ``table`` as the parser's defaults, after checking every key is a known option."""
    known = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"config file {path}: unknown key '{key}'; known keys: "
                              + ", ".join(sorted(known)))
        action = known[key]
        if action.choices is not None and value not in action.choices:
            raise ConfigError(f"config file {path}: {key} = {value!r} is not one of "
                              + ", ".join(map(str, action.choices)))
        if action.type is not None and isinstance(value, str) and action.nargs is None:
            try:
                value = action.type(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"config file {path}: bad value for {key}: {exc}") from None
        if isinstance(action, argparse._AppendAction) and not isinstance(value, list):
            value = [value]
    parser.set_defaults(**table)
    for action in parser._actions:
        if action.dest in table:
            action.required = False
