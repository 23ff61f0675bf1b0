"""The build file: one TOML file -> typed, frozen dataclasses, validated once.

::

    [model]                       # where the model comes from
    source = "cnn"                # a zoo name, an .onnx file, a torch.save()d .pt module, a
                                  # torch.export .pt2 program, or file.py:ClassName
    weights = "net.pth"           # the state dict of a file.py:ClassName model
    module_path = ["src"]         # folders the model's (or data's, metric's) source is in
    input_shape = "input=1,16"    # NAME=D1,D2,...[:dtype]; a torch model without data needs it
    data = "mlp16"                # (a zoo data set; [compress] data takes any data)

    [compress]                    # the long options of `edgec compress`
    data = "my.npz"               # DATA.npz, a folder of .npy, module:function, or a zoo name
    metric = "top1"               # or module:function
    quantize = "int8"

    [[target]]
    name = "arm-a72"              # then the long options of `edgec compile` for its family
    threads = 2
    [target.verify]               # `edgec verify`'s options (seed, tolerance, input)
    [target.simulate]             # `edgec simulate`'s options, for a target that simulates
    [target.model]                # a model of its own (with [target.compress]); each of the
    [target.compress]             # two defaults to the top-level table

    [build]
    output = "build"              # the default of -o

A target's compile and simulate options are its family's typed classes (``Backend.Options``,
``Backend.SimulateOptions``, in ``targets/<family>/options.py``): their fields are the keys of
the ``[[target]]`` table, as they are the flags of ``edgec compile`` and the keywords of
``toolchain.api.compile``, validated the same way; a key of another family names that family.
The option classes of compress and verify are generated from those commands' argparse
definitions, values coerced as the flags would be (``toolchain.config``). Relative paths are
taken from the TOML file's folder and stored absolute, so ``build.json`` loads back to an
equal config.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from toolchain.config import _coerce
from toolchain.errors import ConfigError, EdgecError

TORCH_SUFFIXES = (".pt", ".pth")
TORCH_KINDS = ("torch", "program", "class")
# Keys of a command that a build sets itself (the model, where outputs go) or that would make
# the result depend on the machine rather than on the config (a weight cache folder).
# The compress options that each ask for a step (the others tune those steps).
STEP_KEYS = ("distill", "lowrank", "prune", "prune_channels", "quantize")
# (weights and module_path belong to the [model] table; compress's data is its [compress] key)
_NOT_OPTIONS = {"help", "config", "model", "target", "output", "out_dir", "json", "data",
                "cache_dir", "weights", "module_path"}
_OWN_KEYS = {"compress": {"data"}}


# ---------------------------------------------------------------- option classes from parsers
@lru_cache(maxsize=1)
def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Fresh parsers of compress, compile, verify and simulate (as `edgec` builds them)."""
    from toolchain.commands import build, compress

    root = argparse.ArgumentParser(add_help=False)
    sub = root.add_subparsers()
    for register in (compress.register_compress, build.register_compile,
                     build.register_verify, build.register_simulate):
        register(sub)
    return dict(sub.choices)


def actions(command: str) -> dict[str, argparse.Action]:
    """The options of ``command`` a build file may set, by dest."""
    return {a.dest: a for a in _parsers()[command]._actions
            if a.option_strings and (a.dest not in _NOT_OPTIONS
                                     or a.dest in _OWN_KEYS.get(command, ()))}


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _field_type(action: argparse.Action) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return bool
    # a converter function (e.g. --prune's prune_value) is no type to annotate with
    kind = str if action.type is None else action.type if isinstance(action.type, type) else Any
    if isinstance(action, argparse._AppendAction):
        return tuple[kind, ...]
    return kind | None if action.default is None else kind


@lru_cache(maxsize=None)
def options_class(command: str, family: str | None = None) -> type | None:
    """A frozen dataclass whose fields are ``command``'s options: for compile and simulate
    ``family``'s own typed class (None: it has nothing to simulate), else generated from the
    command's parser."""
    if command in ("compile", "simulate"):
        from toolchain.targets import backend_for
        from toolchain.targets.registry import options_class as family_class

        return family_class(backend_for(family), command)
    acts = actions(command)
    specs = [(dest, _field_type(a), field(default=_freeze(a.default),
                                          metadata={"help": a.help or "",
                                                    "flag": max(a.option_strings, key=len)}))
             for dest, a in acts.items()]
    name = "".join(p.title() for p in f"{command} {family or ''}".split()) + "Options"
    return make_dataclass(name, specs, frozen=True)


def changed(options: Any) -> dict[str, Any]:
    """The fields of an options object that differ from their defaults."""
    return {f.name: getattr(options, f.name) for f in fields(options)
            if getattr(options, f.name) != f.default}


def namespace(command: str, options: Any, **extra) -> argparse.Namespace:
    """An argparse Namespace for ``command`` as its parser would give it, with ``options``
    (tuples back to lists, as an appended flag gives them) and ``extra`` set."""
    args = _parsers()[command].parse_args(
        [] if command in ("compress", "compile") else ["_"])
    for key, value in asdict(options).items():
        setattr(args, key, list(value) if isinstance(value, tuple) else value)
    for key, value in extra.items():
        setattr(args, key, value)
    return args


def _where(path: Path, table: str) -> str:
    return f"{path} [{table}]"


def _options(command: str, table: dict, path: Path, where: str, family: str | None = None,
             base: Path | None = None):
    """Validate ``table`` against ``command``'s options; relative paths from ``base``."""
    cls = options_class(command, family)
    known = {f.name for f in fields(cls)}
    acts = actions(command)
    values = {}
    for key, value in table.items():
        if value is None:  # a default, as build.json writes it
            continue
        dest = key.replace("-", "_")
        if dest not in known:
            raise ConfigError(f"config file {_where(path, where)}: unknown key '{key}'; known "
                              "keys: " + ", ".join(sorted(known)))
        value = _coerce(acts[dest], dest, value, _where(path, where))
        if base is not None:
            value = _absolute(value, base)
        values[dest] = _freeze(value)
    return cls(**values)


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if isinstance(value, Path):
        return value if value.is_absolute() else (base / value).resolve()
    return value


def options_json(options: Any) -> dict:
    """Every field as JSON (paths as strings, tuples as lists)."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return str(v) if isinstance(v, Path) else v
    return {k: plain(v) for k, v in asdict(options).items()}


# ---------------------------------------------------------------- the config
@dataclass(frozen=True)
class ModelSource:
    """The model a chain of steps starts from."""

    source: str                          # a zoo name, a file's absolute path, file.py:Class
    input_shape: tuple[str, ...] = ()    # NAME=D1,D2,...[:dtype] per input
    data: str | None = None              # the zoo data set it takes (a zoo model: its own)
    weights: str | None = None           # a class's state dict (absolute path)
    module_path: tuple[str, ...] = ()    # absolute folders of the user's source

    @property
    def kind(self) -> str:
        """zoo, onnx, torch (a pickled module), program (.pt2) or class (file.py:Class)."""
        from toolchain.torch_input import is_class_ref

        suffix = Path(self.source).suffix.lower()
        if suffix == ".onnx":
            return "onnx"
        if suffix in TORCH_SUFFIXES:
            return "torch"
        if suffix == ".pt2":
            return "program"
        return "class" if is_class_ref(self.source) else "zoo"

    @property
    def data_name(self) -> str | None:
        return self.data or (self.source if self.kind == "zoo" else None)


@dataclass(frozen=True)
class TargetConfig:
    name: str
    family: str
    compile: Any                 # the family's typed compile options (Backend.Options)
    verify: Any                  # options_class("verify")
    simulate: Any | None         # the family's Backend.SimulateOptions, None when it has none
    model: ModelSource
    compress: Any                # options_class("compress")
    own_model: bool = False      # a [target.model] / [target.compress] table of its own


@dataclass(frozen=True)
class BuildConfig:
    """The whole build. ``to_json`` gives a table ``from_table`` reads back to an equal one."""

    path: str = field(compare=False)
    targets: tuple[TargetConfig, ...] = ()
    model: ModelSource | None = None
    compress: Any = None
    output: str | None = None

    def to_json(self) -> dict:
        def model_json(m: ModelSource) -> dict:
            return {"source": m.source, "input_shape": list(m.input_shape), "data": m.data,
                    "weights": m.weights, "module_path": list(m.module_path)}

        out: dict[str, Any] = {"build": {"output": self.output}, "target": []}
        if self.model is not None:
            out["model"] = model_json(self.model)
            out["compress"] = options_json(self.compress)
        for t in self.targets:
            entry = {"name": t.name, **options_json(t.compile),
                     "verify": options_json(t.verify)}
            if t.simulate is not None:
                entry["simulate"] = options_json(t.simulate)
            if t.own_model:
                entry["model"] = model_json(t.model)
                entry["compress"] = options_json(t.compress)
            out["target"].append(entry)
        return out


def load_config(path: Path) -> BuildConfig:
    """Read and validate a build file; every mistake is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"build file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"build file {path} is not valid TOML: {exc}") from None
    return from_table(data, path, path.resolve().parent)


def from_table(data: dict, path: Path, base: Path) -> BuildConfig:
    """Validate a parsed build file (or a ``build.json``); ``base`` resolves relative paths."""
    _known(data, {"model", "compress", "target", "build"}, path, "top level")
    build = _table(data, "build", path)
    _known(build, {"output"}, path, "build")
    output = build.get("output")
    if output is not None and not isinstance(output, str):
        raise ConfigError(f"config file {_where(path, 'build')}: output = {output!r} should "
                          "be a string")
    model = compress = None
    if "model" in data:
        model = _model(_table(data, "model", path), path, "model", base)
        compress = _compress(_table(data, "compress", path), model, path, "compress", base)
    targets = data.get("target")
    if not isinstance(targets, list) or not targets:
        raise ConfigError(f"config file {path}: no [[target]]; add one, e.g. [[target]] "
                          "name = \"host\"")
    top_compress = _table(data, "compress", path)
    parsed = tuple(_target(t, i, model, compress, top_compress, path, base)
                   for i, t in enumerate(targets))
    names = [t.name for t in parsed]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"config file {path}: target '{name}' is listed twice (each "
                              "target gets one folder)")
    if output is not None and not Path(output).is_absolute():
        output = str((base / output).resolve())
    return BuildConfig(str(path), parsed, model, compress, output)


def _known(table: dict, keys: set[str], path: Path, where: str) -> None:
    for key in table:
        if key not in keys:
            raise ConfigError(f"config file {_where(path, where)}: unknown key '{key}'; known "
                              "keys: " + ", ".join(sorted(keys)))


def _table(data: dict, key: str, path: Path, where: str | None = None) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"config file {path}: [{where or key}] must be a table")
    return value


def _model(table: dict, path: Path, where: str, base: Path) -> ModelSource:
    from toolchain import models
    from toolchain.buildflow.sources import resolve_code_ref
    from toolchain.onnx_io import parse_input_shapes

    _known(table, {"source", "input_shape", "data", "weights", "module_path"}, path, where)
    at = _where(path, where)
    source = table.get("source")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"config file {at}: source = {source!r} should name a zoo model "
                          f"({', '.join(models.names())}), an .onnx, .pt or .pt2 file, or "
                          "file.py:ClassName")
    shapes = table.get("input_shape", [])
    shapes = [shapes] if isinstance(shapes, str) else shapes
    if not isinstance(shapes, list) or not all(isinstance(s, str) for s in shapes):
        raise ConfigError(f"config file {at}: input_shape = {shapes!r} should be a string "
                          "NAME=D1,D2,...[:dtype] or a list of them")
    try:
        parse_input_shapes(shapes)
    except ConfigError as exc:
        raise ConfigError(f"config file {at}: input_shape: {exc}") from None
    data = table.get("data")
    if data is not None and data not in models.names():
        raise ConfigError(f"config file {at}: data = {data!r} is not a zoo data set "
                          f"({', '.join(models.names())}); give your own data as [compress] "
                          "data = \"DATA.npz\" (or a folder of .npy, or module:function)")
    folders = table.get("module_path", [])
    folders = [folders] if isinstance(folders, str) else folders
    if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
        raise ConfigError(f"config file {at}: module_path = {folders!r} should be a folder or "
                          "a list of folders")
    folders = [Path(f) if Path(f).is_absolute() else (base / f).resolve() for f in folders]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"config file {at}: module_path: no such folder: {folder}")
    module_path = tuple(str(f) for f in folders)
    weights = table.get("weights")
    if weights is not None:
        if not isinstance(weights, str) or not weights:
            raise ConfigError(f"config file {at}: weights = {weights!r} should be a file")
        file = Path(weights) if Path(weights).is_absolute() else (base / weights).resolve()
        if not file.is_file():
            raise ConfigError(f"config file {at}: weights = {weights!r}: file not found: {file}")
        weights = str(file)
    m = ModelSource(source, tuple(shapes), data, weights, module_path)
    if m.kind == "zoo":
        if source not in models.names():
            raise ConfigError(f"config file {at}: source = {source!r} is not a zoo model "
                              f"({', '.join(models.names())}) nor an .onnx, .pt or .pt2 file "
                              "nor file.py:ClassName")
    elif m.kind == "class":
        m = replace(m, source=resolve_code_ref(source, base, at, "source"))
        if weights is None:
            raise ConfigError(f"config file {at}: source = {source!r} is an architecture: add "
                              "weights = \"STATE_DICT.pt\" (torch.save(model.state_dict(), "
                              "path))")
    else:
        file = Path(source) if Path(source).is_absolute() else (base / source).resolve()
        if not file.is_file():
            raise ConfigError(f"config file {at}: source file not found: {file}")
        m = replace(m, source=str(file))
    if weights is not None and m.kind != "class":
        raise ConfigError(f"config file {at}: weights go with a file.py:ClassName source, not "
                          f"with {source!r}")
    return m


def _compress(table: dict, model: ModelSource, path: Path, where: str, base: Path):
    from toolchain.buildflow.sources import data_ref, resolve_data, resolve_metric
    from toolchain.commands.compress import _validate_numbers, build_steps

    at = _where(path, where)
    table = dict(table)
    if table.get("data") is not None:
        if model.kind == "onnx":
            raise ConfigError(f"config file {at}: data: an ONNX model is not compressed; data "
                              "goes with a PyTorch model (a zoo name, .pt, .pt2 or "
                              "file.py:ClassName)")
        table["data"] = resolve_data(table["data"], base, model.module_path, at)
    if table.get("metric") is not None:
        table["metric"] = resolve_metric(table["metric"], base, model.module_path, at)
    options = _options("compress", table, path, where)
    asked = {k for k in changed(options) if k in STEP_KEYS}
    if asked and model.kind == "onnx":
        raise ConfigError(f"config file {at}: {', '.join(sorted(asked))}: compression takes a "
                          "PyTorch model (a zoo name, a .pt/.pt2 file or file.py:ClassName); "
                          "an ONNX model goes straight to compile")
    if asked and data_ref(model, options) is None:
        raise ConfigError(f"config file {at}: compressing a model file needs the data it "
                          "takes: set data = \"DATA.npz\" (a folder of .npy, module:function "
                          "or a zoo data set) in [compress]")
    if model.kind in TORCH_KINDS and not model.input_shape and data_ref(model, options) is None:
        raise ConfigError(f"config file {at}: a PyTorch model has no input shape; add "
                          "input_shape = \"input=1,16\" (batch first) to its model table, or "
                          "data = \"DATA.npz\" to [compress]")
    args = namespace("compress", options)
    try:
        _validate_numbers(args)
        # distill's teacher is loaded by the compress step; a stand-in is enough here
        build_steps(args, teacher=object() if args.distill else None)
    except EdgecError as exc:
        raise ConfigError(f"config file {at}: {exc}") from None
    return options


def _target(entry, index: int, model, compress, top_compress: dict, path: Path,
            base: Path) -> TargetConfig:
    from toolchain.targets import backend_for, device
    from toolchain.targets.registry import Backend

    if not isinstance(entry, dict):
        raise ConfigError(f"config file {path}: target #{index + 1} must be a table")
    name = entry.get("name")
    where = f"target #{index + 1}"
    if not isinstance(name, str):
        raise ConfigError(f"config file {_where(path, where)}: name = {name!r} should be a "
                          "target name (see 'edgec targets')")
    where = f"target {name}"
    try:
        dev = device(name)
    except ConfigError as exc:
        raise ConfigError(f"config file {_where(path, where)}: {exc}") from None
    backend = backend_for(dev.family)
    flat = {k: v for k, v in entry.items()
            if k not in ("name", "verify", "simulate", "model", "compress")}
    compile_opts = _typed(dev, "compile", flat, path, where, base)
    verify = _options("verify", _table(entry, "verify", path, f"{where}.verify"), path,
                      f"{where}.verify", base=base)
    simulates = type(backend).simulate is not Backend.simulate \
        and backend.SimulateOptions is not None
    if "simulate" in entry and not simulates:
        raise ConfigError(f"config file {_where(path, where + '.simulate')}: the {dev.family} "
                          "targets have nothing to simulate (verify runs the artifact)")
    simulate = (_typed(dev, "simulate", _table(entry, "simulate", path, f"{where}.simulate"),
                       path, f"{where}.simulate", base) if simulates else None)
    own = "model" in entry or "compress" in entry
    if "model" in entry:
        model_t = _model(_table(entry, "model", path, f"{where}.model"), path,
                         f"{where}.model", base)
    elif model is None:
        raise ConfigError(f"config file {_where(path, where)}: no [model] table, and the "
                          "target has no [target.model] of its own")
    else:
        model_t = model
    if "compress" in entry:
        compress_t = _compress(_table(entry, "compress", path, f"{where}.compress"), model_t,
                               path, f"{where}.compress", base)
    elif own:  # its own model, compressed as the top-level table says
        compress_t = _compress(top_compress, model_t, path, "compress", base)
    else:
        compress_t = compress
    return TargetConfig(name, dev.family, compile_opts, verify, simulate, model_t, compress_t,
                        own)


def _typed(dev, command: str, table: dict, path: Path, where: str, base: Path):
    """``table`` as the target family's typed ``command`` options; a key of another family
    names it, an unknown key lists the known ones; relative paths from ``base``."""
    from toolchain.targets import backend_for
    from toolchain.targets.registry import foreign_option
    from toolchain.targets.registry import options_class as family_class

    cls = family_class(backend_for(dev.family), command)
    known = {f.name for f in fields(cls)}
    values = {}
    for key, value in table.items():
        if value is None:  # a default, as build.json writes it
            continue
        name = key.replace("-", "_")
        if name not in known:
            error = foreign_option(name, dev, command)
            if error is not None:
                raise ConfigError(f"config file {_where(path, where)}: {error}")
            raise ConfigError(f"config file {_where(path, where)}: unknown key '{key}'; known "
                              "keys: " + ", ".join(sorted(known)))
        values[name] = value
    try:
        options = cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"config file {_where(path, where)}: {exc}") from None
    paths = {f.name: _absolute(getattr(options, f.name), base) for f in fields(options)
             if isinstance(getattr(options, f.name), Path)}
    return replace(options, **paths) if paths else options
