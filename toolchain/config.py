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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:  # bytes, nesting
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get(command, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{command}] must be a table")
    return {k.replace("-", "_"): v for k, v in table.items()}


def apply_defaults(parser: argparse.ArgumentParser, table: dict[str, Any], path: Path) -> None:
    """Set ``table`` as the parser's defaults, after checking every key is a known option.

    Each value is checked and converted as its command-line flag would be (``type``, choices, a
    flag's true/false); a repeatable option takes one value or a list. A wrong value is a
    one-line ConfigError naming the file and the key.
    """
    known = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    coerced: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"config file {path}: unknown key '{key}'; known keys: "
                              + ", ".join(sorted(known)))
        coerced[key] = _coerce(known[key], key, value, path)
    parser.set_defaults(**coerced)
    for action in parser._actions:
        if action.dest in coerced:
            action.required = False


def _coerce(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    """``value`` from the file as the option's flag would give it, or a ConfigError."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config file {path}: {key} = {value!r} should be {expected}")

    typed = getattr(action, "typed_option", None)
    if typed is not None:  # a target family's option: its field coerces and checks it
        from toolchain.options import coerce_field

        if isinstance(value, (list, dict)) and action.nargs is None and \
                not isinstance(action, argparse._AppendAction):
            raise bad("a single value")
        try:
            value = coerce_field(*typed, value)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        return list(value) if isinstance(value, tuple) else value  # argparse appends to it

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+")
    if many:
        items = value if isinstance(value, list) else [value]
        return [_coerce_one(action, key, v, path, bad) for v in items]
    if isinstance(value, (list, dict)):
        raise bad("a single value")
    return _coerce_one(action, key, value, path, bad)


def _coerce_one(action: argparse.Action, key: str, value: Any, path: Path, bad) -> Any:
    kind = action.type
    expected = {int: "an integer", float: "a number"}.get(kind, "a string")
    if isinstance(value, str):
        if kind is not None:
            try:
                value = kind(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise ConfigError(f"config file {path}: bad value for {key}: {exc}") from None
    elif isinstance(value, bool):
        raise bad(expected)
    elif kind is int and isinstance(value, int):
        pass
    elif kind is float and isinstance(value, (int, float)):
        value = float(value)
    elif kind is None and isinstance(value, (int, float)):
        value = str(value)  # e.g. reuse_factor = 4: what the flag "--reuse-factor 4" gives
    elif kind not in (int, float) and isinstance(value, (int, float)):
        try:  # a flag with its own parser (e.g. --prune, a sparsity or 2:4) given a number
            value = kind(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"config file {path}: bad value for {key}: {exc}") from None
    else:
        raise bad(expected)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"config file {path}: {key} = {value!r} is not one of "
                          + ", ".join(map(str, action.choices)))
    return value
