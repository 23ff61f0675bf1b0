"""A build's user inputs: the model forms and the data ``edgec compress`` takes.

- ``[model] source``: a zoo name, an ``.onnx`` file, a ``torch.save()``d module (``.pt``,
  ``.pth``; its source found through ``module_path``), a ``torch.export`` program (``.pt2``),
  or ``file.py:ClassName`` / ``package.module:ClassName`` with ``weights`` (a state dict);
- ``[compress] data``: a zoo data set, ``DATA.npz``, a folder of ``.npy`` files, ``DATA.npy``
  or ``module:function`` / ``file.py:function`` (``toolchain.compress.data``); ``metric``: a
  built-in name or ``module:function``.

Paths are taken from the build file's folder (``resolve_*``, at config time, each mistake a
one-line error naming the key). ``*_identity`` gives what a step's cache key holds for them:
content hashes of the files (a data folder: its ``x``/``y`` arrays; a ``module:function``: the
module's source file), so changing the data reruns compress.

A ``file.py:ClassName`` module is imported under a fixed name derived from its path and kept in
``sys.modules`` (``register``), so the module the load step saves with ``torch.save`` and the
compressed one pickle by reference and load again in later steps, which register it first.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Sequence

from toolchain.buildflow.cache import file_hash
from toolchain.errors import ConfigError, ModelError

MODEL_FILES = ("model.onnx", "model.pt", "model.pt2")


# ---------------------------------------------------------------- config time
def _is_code_ref(value: str, base: Path) -> bool:
    """``module:name`` or ``file.py:name`` (not a path that exists)."""
    head, sep, tail = value.rpartition(":")
    return bool(sep and head and tail.isidentifier() and not (base / value).exists())


def resolve_code_ref(value: str, base: Path, where: str, key: str) -> str:
    """``file.py:name`` with the file made absolute (it must exist); ``module:name`` as is."""
    head, _, tail = value.rpartition(":")
    if not head.endswith(".py"):
        return value
    file = Path(head) if Path(head).is_absolute() else (base / head).resolve()
    if not file.is_file():
        raise ConfigError(f"config file {where}: {key} = {value!r}: file not found: {file}")
    return f"{file}:{tail}"


def resolve_data(value: Any, base: Path, module_paths: Sequence[str], where: str) -> str:
    """A ``[compress] data`` value, checked: zoo names as they are, files and folders absolute
    and read once (so a bad file is named now, not after the load step)."""
    from toolchain import models
    from toolchain.compress.data import load_data

    if not isinstance(value, str) or not value:
        raise ConfigError(f"config file {where}: data = {value!r} should be a string: a zoo "
                          "data set, DATA.npz, a folder of .npy files or module:function")
    if value in models.names():
        return value
    if _is_code_ref(value, base):
        return _function_ref(value, base, where, "data", module_paths)
    path = Path(value) if Path(value).is_absolute() else (base / value).resolve()
    if not path.exists():
        raise ConfigError(f"config file {where}: data = {value!r}: no such file or folder: "
                          f"{path}")
    if not (path.is_dir() or path.suffix.lower() in (".npz", ".npy")):
        raise ConfigError(f"config file {where}: data = {value!r}: {path} is not an .npz or "
                          ".npy file nor a folder of .npy files")
    try:
        load_data(str(path))
    except ConfigError as exc:
        raise ConfigError(f"config file {where}: data = {value!r}: {exc}") from None
    return str(path)


def resolve_metric(value: Any, base: Path, module_paths: Sequence[str], where: str) -> str:
    from toolchain.compress.evaluate import BUILTIN

    if not isinstance(value, str) or not value:
        raise ConfigError(f"config file {where}: metric = {value!r} should be a string")
    if value in BUILTIN:
        return value
    if ":" not in value:
        raise ConfigError(f"config file {where}: metric = {value!r} is unknown; use "
                          f"{', '.join(BUILTIN)} or module:function")
    return _function_ref(value, base, where, "metric", module_paths)


def _function_ref(value: str, base: Path, where: str, key: str, module_paths) -> str:
    """``value`` (``module:function`` or ``file.py:function``) resolved against ``base``,
    checked to import and to be callable; a one-line error naming the key otherwise."""
    from toolchain.compress.data import import_attr

    ref = resolve_code_ref(value, base, where, key)
    try:
        fn = import_attr(ref, key, module_paths)
    except ConfigError as exc:
        raise ConfigError(f"config file {where}: {key} = {value!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"config file {where}: {key} = {value!r} is a "
                          f"{type(fn).__name__}, not a function")
    return ref


# ---------------------------------------------------------------- cache identity
def code_identity(ref: str, module_paths: Sequence[str] = ()) -> dict:
    """``module:name`` -> the content hash of the module's source file (when found)."""
    from toolchain.compress.data import on_path

    head, _, name = ref.rpartition(":")
    if head.endswith(".py"):
        return {"ref": ref, "file_sha256": file_hash(Path(head))}
    try:
        with on_path(module_paths):
            spec = importlib.util.find_spec(head)
    except (ImportError, ValueError):
        spec = None
    origin = getattr(spec, "origin", None)
    if origin and Path(origin).is_file():
        return {"ref": ref, "file_sha256": file_hash(Path(origin))}
    return {"ref": ref}


def data_identity(ref: str | None, module_paths: Sequence[str] = ()) -> dict | None:
    """What a step's key holds for ``--data REF``: file contents, not names."""
    from toolchain import models
    from toolchain.compress.data import KEYS

    if ref is None:
        return None
    if ref in models.names():
        return {"zoo": ref, "zoo_key": models.cache_key(ref)}
    path = Path(ref)
    if path.is_file():
        return {"file_sha256": file_hash(path)}
    if path.is_dir():
        h = hashlib.sha256()
        for key in KEYS:
            if (path / f"{key}.npy").is_file():
                h.update(f"{key}\0{file_hash(path / f'{key}.npy')}\n".encode())
        return {"folder_sha256": h.hexdigest()}
    return code_identity(ref, module_paths)


# ---------------------------------------------------------------- loading
def register(ref: str) -> str:
    """Import ``file.py:Class``'s file under a name fixed by its path (kept in sys.modules)
    and return ``module:Class`` for it; another ref comes back as it is."""
    head, _, name = ref.rpartition(":")
    if not head.endswith(".py"):
        return ref
    file = Path(head).resolve()
    mod = "edgec_build_" + hashlib.sha256(str(file).encode()).hexdigest()[:12] + "_" + \
        "".join(c if c.isalnum() else "_" for c in file.stem)
    if mod not in sys.modules:
        from toolchain.compress.data import on_path

        if not file.is_file():
            raise ModelError(f"model {ref}: file not found: {file}")
        with on_path([file.parent]):
            spec = importlib.util.spec_from_file_location(mod, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod]
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ModelError(f"model {ref}: cannot import {file.name}: "
                                 f"{type(exc).__name__}: {text}") from None
    return f"{mod}:{name}"


def load_source(m) -> Any:
    """The model of a ``[model]`` table (a torch kind), loaded and checked."""
    from toolchain.torch_input import load_module

    if m.kind == "class":
        return load_module(register(m.source), "model", m.module_path, m.weights)
    return load_module(Path(m.source), "model", m.module_path)


def load_folder(folder: Path, m) -> Any:
    """The PyTorch model a step folder holds (model.pt or model.pt2)."""
    from toolchain.torch_input import load_module

    if m.kind == "class":
        register(m.source)
    for name in ("model.pt", "model.pt2"):
        if (folder / name).is_file():
            return load_module(folder / name, "model", m.module_path)
    raise FileNotFoundError(folder / "model.pt")


def model_file(folder: Path) -> str | None:
    return next((n for n in MODEL_FILES if (folder / n).is_file()), None)


def data_context(m, options, module) -> Any:
    """The compression Context: the ``[compress] data`` (or the zoo data set the model table
    names) with its metric chosen as ``edgec compress`` chooses it."""
    from dataclasses import replace

    from toolchain.compress import Context, load_data, metric_for
    from toolchain.compress.pipeline import check_io
    from toolchain.models.train import predict

    ref = data_ref(m, options)
    user = ref is not None and ref != m.data_name
    ctx = load_data(ref, m.module_path) if user else Context.for_zoo(ref)
    if not user and options.metric is None:
        return ctx
    check_io(module, ctx)
    outputs = predict(module, ctx.X_test[:2])
    return replace(ctx, metric=metric_for(options.metric, ctx.y_test, outputs, m.module_path))


def data_ref(m, options) -> str | None:
    """``[compress] data``, else the zoo data set of the model table (a zoo model: its own)."""
    return getattr(options, "data", None) or m.data_name
