"""Typed, frozen option classes: one per target family, the source of its flags and keys.

A family's options are a frozen dataclass whose fields carry their help, choices and check in
their metadata (``option(...)``). From that one class come:

- the ``edgec compile`` / ``edgec simulate`` flags (``add_flags``: an argument group, every
  flag taking its value as given, so a bad value is this module's one-line error, not
  argparse's usage dump);
- the keys of a build file's ``[[target]]`` table (``toolchain.buildflow.config``);
- the keyword arguments of ``toolchain.api.compile``;
- the ``options`` table of an output folder's ``edgec.json`` (``to_json`` / ``from_json``).

Constructing an object coerces and validates every field once (``__post_init__``): a string
from the command line becomes the field's type, a TOML or Python value is checked against it,
choices and checks run, and the class's ``validate`` sees the whole object. Every mistake is a
``ConfigError`` naming the option's flag and what it takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping

from toolchain.errors import ConfigError

Choices = tuple[str, ...] | Callable[[], Iterable[str]]


def option(default: Any, help: str, *, choices: Choices | None = None, metavar: str | None = None,
           check: Callable[[Any], str | None] | None = None,
           normalize: Callable[[str], str] | None = None) -> Any:
    """A field of an options class. ``choices`` may be a function (a registry read lazily);
    ``check(value)`` returns what the value must be (e.g. "an integer from 1 to 256") when it
    is not, else None, or raises its own ConfigError; ``normalize``
    maps a given string first (lower-casing, an alias). A bad value reads
    ``--threads must be an integer from 1 to 256, not 0`` (``check`` returns the part after
    "must be") or ``--pipeline 'turbo' is not one of auto, cpu, ...``."""
    meta = {"help": help, "choices": choices, "metavar": metavar, "check": check,
            "normalize": normalize}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return field(default=default, metadata=meta)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    c = f.metadata.get("choices")
    if c is None:
        return None
    return tuple(c() if callable(c) else c)


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split(kind: Any) -> tuple[Any, bool, bool]:
    """(element type, optional, repeated) of an annotation such as ``int | None`` or
    ``tuple[str, ...]``."""
    optional = False
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional, kind = True, args[0]
    if typing.get_origin(kind) is tuple:
        return typing.get_args(kind)[0], optional, True
    return kind, optional, False


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             Path: "a path"}


def _one(f: dataclasses.Field, kind: Any, value: Any) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"{flag_of(f.name)} must be {_EXPECTED.get(kind, kind.__name__)}, "
                           f"not {value!r}")

    if kind is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if isinstance(value, bool):
        raise bad()
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if kind is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if kind is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise bad()
    if kind is str:
        if isinstance(value, (int, float)):  # reuse_factor = 4, as the flag "4" gives it
            value = str(value)
        if not isinstance(value, str):
            raise bad()
        normalize = f.metadata.get("normalize")
        return normalize(value) if normalize else value
    raise TypeError(f"option type {kind!r} of {f.name} is not supported")


def _coerce(f: dataclasses.Field, kind: Any, value: Any) -> Any:
    element, optional, repeated = _split(kind)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{flag_of(f.name)} needs a value")
    if repeated:
        items = value if isinstance(value, (list, tuple)) else [value]
        out = tuple(_one(f, element, v) for v in items)
    elif isinstance(value, (list, tuple, dict)):
        raise ConfigError(f"{flag_of(f.name)} takes one value, not {value!r}")
    else:
        out = _one(f, element, value)
    for v in out if repeated else (out,):
        allowed = choices_of(f)
        if allowed is not None and v not in allowed:
            raise ConfigError(f"{flag_of(f.name)} {v!r} is not one of " + ", ".join(allowed))
        check = f.metadata.get("check")
        problem = check(v) if check else None
        if problem:
            raise ConfigError(f"{flag_of(f.name)} must be {problem}, not {v!r}")
    return out


class Options:
    """The base of every options class (subclasses are ``@dataclass(frozen=True)``)."""

    title: ClassVar[str] = "options"

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            value = _coerce(f, hints[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks across fields (the single fields are checked already)."""

    # ------------------------------------------------------------ in and out
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], family: str = "") -> "Options":
        """From keys (``-`` or ``_``) to values; an unknown key lists the known ones."""
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                what = f" of the {family} targets" if family else ""
                raise ConfigError(f"unknown option {flag_of(name)}{what}; known options: "
                                  + ", ".join(flag_of(k) for k in sorted(known)))
            if value is not None:
                kwargs[name] = value
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        """Every field, as JSON (tuples as lists, paths as strings)."""
        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return str(v) if isinstance(v, Path) else v
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Options":
        """Read back what ``to_json`` wrote. Keys that are not fields are ignored: a folder
        written before the options were typed saved every flag of every family."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and v is not None})

    def changed(self) -> dict[str, Any]:
        """The fields that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != f.default}


def own_fields(cls: type, common: type | None = None) -> list[dataclasses.Field]:
    """The fields ``cls`` adds to ``common`` (default: ``CommonOptions``)."""
    base = {f.name for f in fields(common or CommonOptions)}
    return [f for f in fields(cls) if f.name not in base]


def add_flags(parser: argparse.ArgumentParser, cls: type, title: str,
              only: Iterable[dataclasses.Field] | None = None, taken: set[str] | None = None
              ) -> None:
    """An argument group with one flag per field of ``cls`` (or ``only`` those). Each flag's
    argparse default is None, so "given" is "not None"; the field's default is in the help.
    ``taken``: dests already added by another class (a shared name is added once)."""
    g = parser.add_argument_group(title)
    hints = _hints(cls)
    for f in only if only is not None else fields(cls):
        if taken is not None:
            if f.name in taken:
                continue
            taken.add(f.name)
        element, _, repeated = _split(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = None if f.default is MISSING else f.default
        if element is bool:
            action = g.add_argument(flag_of(f.name), dest=f.name, action="store_true",
                                    default=None, help=help_text)
            action.typed_option = (cls, f.name)
            continue
        allowed = f.metadata.get("choices")
        metavar = f.metadata.get("metavar")
        if metavar is None and allowed is not None:
            metavar = "{" + ",".join(choices_of(f)) + "}"
        if default not in (None, ()):
            help_text += f" (default {default})"
        action = g.add_argument(flag_of(f.name), dest=f.name, default=None, metavar=metavar,
                                action="append" if repeated else "store", help=help_text)
        # a config file's value for this flag is checked as the field checks it
        action.typed_option = (cls, f.name)


def coerce_field(cls: type, name: str, value: Any) -> Any:
    """``value`` as field ``name`` of ``cls`` takes it (coerced and checked alone), or a
    ConfigError."""
    f = next(f for f in fields(cls) if f.name == name)
    return _coerce(f, _hints(cls)[name], value)


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` that ``args`` sets (not None: given or from a config)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


# ---------------------------------------------------------------- every family's
def _input_shape(item: str) -> str | None:
    from toolchain.onnx_io import parse_input_shapes

    parse_input_shapes([item])  # its own one-line error names --input-shape
    return None


@dataclass(frozen=True)
class CommonOptions(Options):
    """The compile options of every target family (each family's class extends it)."""

    title: ClassVar[str] = "every target"

    input_shape: tuple[str, ...] = option(
        (), "static shape for a dynamic input (repeat per input); for a PyTorch model an "
            "element type may follow, e.g. input_ids=1,32:int64",
        metavar="NAME=D1,D2,...", check=_input_shape)
