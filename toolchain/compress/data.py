"""The data a compression run uses: the user's own, or a zoo data set by name.

``load_data(ref)`` turns ``--data REF`` into a :class:`~toolchain.compress.pipeline.Context`:

- a zoo model's name (``edgec zoo``): that model's digits split, as before;
- ``FILE.npz`` with an array ``x`` (inputs, batch first) and optionally ``y`` (labels: integer
  classes, or float targets shaped like the model's output), ``x_test`` and ``y_test``;
- a folder holding ``x.npy`` and optionally ``y.npy``, ``x_test.npy``, ``y_test.npy`` (the same
  convention, one array per file; other files are ignored);
- ``module:function`` or ``path/file.py:function``: a function taking no argument that returns
  a ``torch.utils.data.Dataset`` or ``DataLoader`` whose items are ``x`` or ``(x, y)`` (samples
  for a Dataset, batches for a DataLoader), or a tuple ``(x, y)`` of arrays.

Without ``x_test`` the samples are split once, seeded: 20% for evaluation (the metric before and
after each step), 80% for calibration and fine-tuning; fewer than 10 samples are used for both.
Inputs keep an integer dtype (token ids); float64 becomes float32. No labels means the run can
only calibrate (post-training quantization) and prune without fine-tuning.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.errors import ConfigError

log = logging.getLogger(__name__)

KEYS = ("x", "y", "x_test", "y_test")
MAX_SAMPLES = 50_000  # read from a Dataset / DataLoader at most (calibration needs far fewer)
TEST_FRACTION = 0.2
MIN_SPLIT = 10


@contextmanager
def on_path(folders: Sequence[Path | str]):
    """``folders`` first on ``sys.path`` for the duration (imports of the user's code)."""
    added = [str(Path(f).resolve()) for f in folders]
    sys.path[:0] = added
    try:
        yield
    finally:
        for f in added:
            if f in sys.path:
                sys.path.remove(f)


def import_attr(ref: str, what: str, module_paths: Sequence[Path | str] = ()):
    """``module:name`` or ``file.py:name`` -> the object, or a one-line ConfigError."""
    mod_name, _, attr = ref.rpartition(":")
    if not mod_name or not attr:
        raise ConfigError(f"{what} '{ref}' should be module:name or file.py:name")
    try:
        with on_path(module_paths):
            if mod_name.endswith(".py"):
                file = Path(mod_name)
                if not file.is_file():
                    raise ConfigError(f"{what} '{ref}': file not found: {file}")
                with on_path([file.parent]):
                    spec = importlib.util.spec_from_file_location(f"edgec_user_{file.stem}", file)
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
            else:
                module = importlib.import_module(mod_name)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module failed to import: one line
        raise ConfigError(f"{what} '{ref}': cannot import {mod_name}: "
                          f"{type(exc).__name__}: {_first(exc)}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{what} '{ref}': {mod_name} has no '{attr}'")
    return getattr(module, attr)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:
        raise ConfigError(f"cannot read {path} as an .npz file: {_first(exc)}") from None
    if "x" not in arrays:
        raise ConfigError(f"{path} has no array 'x' (it holds: {', '.join(arrays) or 'nothing'});"
                          " save the inputs as x (and labels as y): np.savez(path, x=..., y=...)")
    return {k: v for k, v in arrays.items() if k in KEYS}


def _read_folder(path: Path) -> dict[str, np.ndarray]:
    if not (path / "x.npy").is_file():
        found = sorted(p.name for p in path.glob("*.npy"))
        raise ConfigError(f"data folder {path} has no x.npy (found: {', '.join(found) or 'no .npy'}"
                          "); it needs x.npy (inputs, batch first) and optionally y.npy, "
                          "x_test.npy, y_test.npy")
    arrays = {}
    for key in KEYS:
        f = path / f"{key}.npy"
        if f.is_file():
            try:
                arrays[key] = np.load(f, allow_pickle=False)
            except Exception as exc:
                raise ConfigError(f"cannot read {f} as a .npy array: {_first(exc)}") from None
    return arrays


def _to_numpy(v, where: str) -> np.ndarray:
    import torch

    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    try:
        return np.asarray(v)
    except Exception:
        raise ConfigError(f"{where}: cannot turn a {type(v).__name__} into an array") from None


def _split_item(item, where: str) -> tuple:
    if isinstance(item, (tuple, list)):
        if len(item) not in (1, 2):
            raise ConfigError(f"{where}: items must be x or (x, y); got a {type(item).__name__} "
                              f"of {len(item)}")
        return tuple(item) if len(item) == 2 else (item[0], None)
    if isinstance(item, dict):
        if "x" not in item:
            raise ConfigError(f"{where}: dict items need a key 'x' (got {', '.join(item)})")
        return item["x"], item.get("y")
    return item, None


def _from_torch(obj, where: str) -> dict[str, np.ndarray]:
    """Arrays from a Dataset (samples), a DataLoader (batches) or an (x, y) tuple."""
    import torch.utils.data as tud

    if isinstance(obj, tuple) and len(obj) == 2 and not isinstance(obj, tud.Dataset):
        out = {"x": _to_numpy(obj[0], where)}
        if obj[1] is not None:
            out["y"] = _to_numpy(obj[1], where)
        return out
    batched = isinstance(obj, tud.DataLoader) and obj.batch_size is not None
    if not isinstance(obj, (tud.Dataset, tud.DataLoader)):
        raise ConfigError(f"{where} returned a {type(obj).__name__}; it must return a "
                          "torch.utils.data.Dataset, a DataLoader or a tuple (x, y)")
    xs, ys, n = [], [], 0
    try:
        iterator = iter(obj) if isinstance(obj, (tud.DataLoader, tud.IterableDataset)) else (
            obj[i] for i in range(len(obj)))
        for item in iterator:
            x, y = _split_item(item, where)
            x = _to_numpy(x, where)
            xs.append(x if batched else x[None])
            if y is not None:
                y = _to_numpy(y, where)
                ys.append(y if batched else y[None])
            n += len(xs[-1])
            if n >= MAX_SAMPLES:
                log.warning("%s: read the first %d samples only", where, n)
                break
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{where}: reading the data failed: {type(exc).__name__}: "
                          f"{_first(exc)}") from None
    if not xs:
        raise ConfigError(f"{where} returned no samples")
    if ys and len(ys) != len(xs):
        raise ConfigError(f"{where}: some items have labels and some do not")
    try:
        out = {"x": np.concatenate(xs)}
        if ys:
            out["y"] = np.concatenate(ys)
    except ValueError as exc:
        raise ConfigError(f"{where}: samples of different shapes: {_first(exc)}") from None
    return out


def _clean(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Check shapes and types; float64 -> float32; labels as int64 or float32."""
    out = {}
    for key, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            raise ConfigError(f"{where}: {key} has dtype {a.dtype}; it must be numbers")
        if key.startswith("x"):
            if a.ndim < 2:
                raise ConfigError(f"{where}: {key} has shape {a.shape}; inputs need a batch "
                                  "dimension first, e.g. (N, 16) or (N, 1, 8, 8)")
            if a.dtype.kind == "f":
                a = a.astype(np.float32)
                if not np.isfinite(a).all():
                    raise ConfigError(f"{where}: {key} holds NaN or infinity")
            elif a.dtype.kind == "b":
                a = a.astype(np.float32)
        else:
            a = a.astype(np.int64) if a.dtype.kind in "biu" else a.astype(np.float32)
        if len(a) == 0:
            raise ConfigError(f"{where}: {key} is empty")
        out[key] = np.ascontiguousarray(a)
    for x, y in (("x", "y"), ("x_test", "y_test")):
        if y in out and x not in out:
            raise ConfigError(f"{where}: {y} without {x}")
        if y in out and len(out[y]) != len(out[x]):
            raise ConfigError(f"{where}: {x} has {len(out[x])} samples but {y} has "
                              f"{len(out[y])}")
    if "x_test" in out:
        if out["x_test"].shape[1:] != out["x"].shape[1:]:
            raise ConfigError(f"{where}: x_test samples are {out['x_test'].shape[1:]}, "
                              f"x samples {out['x'].shape[1:]}")
        if ("y" in out) != ("y_test" in out):
            raise ConfigError(f"{where}: give labels for both x and x_test, or for neither")
    return out


def _split(a: dict[str, np.ndarray], seed: int) -> tuple:
    x, y = a["x"], a.get("y")
    if "x_test" in a:
        return x, y, a["x_test"], a.get("y_test")
    n = len(x)
    if n < MIN_SPLIT:
        return x, y, x, y
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * TEST_FRACTION)))
    test, train = order[:n_test], order[n_test:]
    pick = (lambda arr, idx: None if arr is None else arr[idx])
    return pick(x, train), pick(y, train), pick(x, test), pick(y, test)


def load_data(ref: str, module_paths: Sequence[Path | str] = (), seed: int = 0, **overrides):
    """``--data REF`` -> a Context (see the module docstring for what REF can be)."""
    from toolchain import models
    from toolchain.compress.pipeline import Context

    ref = str(ref)
    if ref in models.names():
        return Context.for_zoo(ref, **overrides)
    path = Path(ref)
    if path.is_dir():
        arrays = _read_folder(path)
    elif path.suffix.lower() == ".npz":
        if not path.is_file():
            raise ConfigError(f"data file not found: {path}")
        arrays = _read_npz(path)
    elif path.suffix.lower() == ".npy" and path.is_file():
        arrays = {"x": np.load(path, allow_pickle=False)}
    elif ":" in ref and not path.exists():
        fn = import_attr(ref, "--data", module_paths)
        if not callable(fn):
            raise ConfigError(f"--data '{ref}' is a {type(fn).__name__}, not a function")
        try:
            with on_path(module_paths):
                obj = fn()
        except Exception as exc:
            raise ConfigError(f"--data '{ref}' raised {type(exc).__name__}: {_first(exc)}") \
                from None
        arrays = _from_torch(obj, f"--data '{ref}'")
    else:
        raise ConfigError(f"unknown data '{ref}': not a zoo data set ({', '.join(models.names())}"
                          "), an .npz file, a folder of .npy files (x.npy [+ y.npy]) or "
                          "module:function")
    arrays = _clean(arrays, f"data {ref}")
    X_tr, y_tr, X_te, y_te = _split(arrays, seed)
    log.info("data %s: %d samples for calibration / fine-tuning, %d for evaluation, %s",
             ref, len(X_tr), len(X_te), "labelled" if y_tr is not None else "no labels")
    return Context(X_tr, y_tr, X_te, y_te, source=ref, **overrides)
