"""The metric a compression run reports before and after each step (``--metric``).

A metric scores a model's outputs on the evaluation split: ``score(outputs, labels,
reference)`` where ``reference`` holds the original (uncompressed) model's outputs on the same
inputs, so a metric can measure how far compression moved the model without any labels.
The same function scores PyTorch outputs during the steps and onnxruntime's outputs on the
exported file.

Built in:

- ``top1``, ``top5``: accuracy in percent against integer class labels (outputs (N, C));
- ``mse``, ``mae``: mean squared / absolute error against float targets shaped like the outputs;
- ``agree``: percent of samples whose top-1 class equals the original model's (no labels);
- ``pixel-agree``: the same per position of a dense output (segmentation maps (N, C, H, W),
  sequences (N, C, T)): the class is the argmax over the channel axis 1 at each position, the
  score the percent of positions whose class equals the original model's (no labels);
- ``drift``: mean squared difference from the original model's outputs (no labels).

Or ``module:function`` / ``file.py:function``: your own, called as ``function(outputs, labels)``
(numpy arrays; labels None when the data has none) and returning a number.

Default: ``top1`` for integer labels and (N, C) outputs, ``mse`` for float labels, ``agree``
without labels when the outputs are (N, C) with C > 1, else ``drift``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from toolchain.errors import ConfigError


def _need_classes(outputs: np.ndarray, labels: np.ndarray, name: str) -> None:
    if outputs.ndim != 2 or labels.dtype.kind not in "iu":
        raise ConfigError(f"metric {name} needs (N, classes) outputs and integer labels; the "
                          f"model gives {outputs.shape[1:]} and the labels are {labels.dtype}")
    if labels.min() < 0 or labels.max() >= outputs.shape[1]:
        raise ConfigError(f"metric {name}: labels span {labels.min()}..{labels.max()} but the "
                          f"model has {outputs.shape[1]} outputs per sample")


def _topk(k: int):
    def score(outputs, labels, reference):
        _need_classes(outputs, labels, f"top{k}")
        if k == 1:  # argmax: the first of equal logits, as the zoo's accuracy counts
            return float((outputs.argmax(axis=1) == labels).mean() * 100.0)
        top = np.argsort(-outputs, axis=1, kind="stable")[:, :k]
        return float((top == labels[:, None]).any(axis=1).mean() * 100.0)
    return score


def _same_shape(outputs, labels, name) -> np.ndarray:
    lab = np.asarray(labels, np.float64)
    if lab.size != outputs.size:
        raise ConfigError(f"metric {name}: labels of shape {labels.shape[1:]} per sample do not "
                          f"match the model's outputs of shape {outputs.shape[1:]}")
    return lab.reshape(outputs.shape)


def _mse(outputs, labels, reference):
    return float(np.mean((outputs.astype(np.float64) - _same_shape(outputs, labels, "mse")) ** 2))


def _mae(outputs, labels, reference):
    return float(np.mean(np.abs(outputs.astype(np.float64) - _same_shape(outputs, labels, "mae"))))


def _agree(outputs, labels, reference):
    if outputs.ndim != 2:
        raise ConfigError(f"metric agree needs (N, classes) outputs; the model gives "
                          f"{outputs.shape[1:]} (use drift)")
    return float((outputs.argmax(1) == reference.argmax(1)).mean() * 100.0)


def _pixel_agree(outputs, labels, reference):
    if outputs.ndim < 2 or outputs.shape[1] < 2:
        raise ConfigError(f"metric pixel-agree needs (N, classes, ...) outputs with at least two "
                          f"classes on axis 1; the model gives {outputs.shape[1:]} (use drift)")
    return float((outputs.argmax(1) == reference.argmax(1)).mean() * 100.0)


def _drift(outputs, labels, reference):
    return float(np.mean((outputs.astype(np.float64) - reference.astype(np.float64)) ** 2))


@dataclass(frozen=True)
class Metric:
    name: str
    needs_labels: bool
    higher_is_better: bool
    fn: Callable = field(repr=False, compare=False)
    user: bool = False  # the user's own function(outputs, labels)

    def score(self, outputs: np.ndarray, labels: np.ndarray | None,
              reference: np.ndarray | None) -> float:
        outputs = np.asarray(outputs)
        if self.needs_labels and labels is None:
            raise ConfigError(f"metric {self.name} needs labels (y), and the data has none; "
                              "use --metric agree or drift, or give labels")
        if self.fn in (_agree, _pixel_agree, _drift) and reference is not None \
                and reference.shape != outputs.shape:
            raise ConfigError(f"metric {self.name}: the outputs changed shape from "
                              f"{reference.shape[1:]} to {outputs.shape[1:]}")
        if self.user:
            try:
                value = self.fn(outputs, labels)
            except Exception as exc:
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ConfigError(f"metric {self.name} raised {type(exc).__name__}: "
                                  f"{text}") from None
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"metric {self.name} returned a {type(value).__name__}, "
                                  "not a number") from None
        return float(f"{self.fn(outputs, labels, reference):.6g}")  # 6 significant digits


BUILTIN = {
    "top1": Metric("top1", True, True, _topk(1)),
    "top5": Metric("top5", True, True, _topk(5)),
    "mse": Metric("mse", True, False, _mse),
    "mae": Metric("mae", True, False, _mae),
    "agree": Metric("agree", False, True, _agree),
    "pixel-agree": Metric("pixel-agree", False, True, _pixel_agree),
    "drift": Metric("drift", False, False, _drift),
}


# metrics in percent (reports round them to 3 decimals and print a % sign)
PERCENT = ("top1", "top5", "agree", "pixel-agree")


def metric_for(name: str | None, labels: np.ndarray | None, outputs: np.ndarray,
               module_paths: Sequence[Path | str] = ()) -> Metric:
    """The metric ``--metric NAME`` asks for, or the default for these labels and outputs."""
    if name is None:
        if labels is None:
            return BUILTIN["agree" if outputs.ndim == 2 and outputs.shape[1] > 1 else "drift"]
        if labels.dtype.kind in "iu" and outputs.ndim == 2:
            return BUILTIN["top1"]
        return BUILTIN["mse"]
    if name in BUILTIN:
        m = BUILTIN[name]
        if m.needs_labels and labels is None:
            raise ConfigError(f"--metric {name} needs labels (y), and the data has none; use "
                              "--metric agree, pixel-agree or drift (they compare with the original "
                              "model)")
        return m
    if ":" not in name:
        raise ConfigError(f"unknown metric '{name}'; use {', '.join(BUILTIN)} or "
                          "module:function (your own, called as function(outputs, labels))")
    from toolchain.compress.data import import_attr

    fn = import_attr(name, "--metric", module_paths)
    if not callable(fn):
        raise ConfigError(f"--metric '{name}' is a {type(fn).__name__}, not a function")
    return Metric(name, False, True, fn, user=True)
