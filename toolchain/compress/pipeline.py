"""Run a list of compression steps on a model and record what each one changed.

A step is a small frozen dataclass with a ``name``, ``apply(model, ctx) -> model`` and
``to_json()`` (see prune.py, channels.py, quantize.py, distill.py, lowrank.py); a step that
needs labels says so in ``labels_needed(ctx)`` (checked for every step before the first runs).
``compress`` copies the model, applies the steps in the given order and measures the metric
(PyTorch, on the evaluation split; ``evaluate.py``), parameters, non-zeros, MACs and bytes
before and after each one. ``accuracy`` is the top-1 accuracy when the metric is top1, else null.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, Sequence

import numpy as np
from torch import nn

from toolchain.compress.evaluate import PERCENT
from toolchain.compress.metrics import ModelStats, model_stats
from toolchain.errors import ModelError
from toolchain.models.train import accuracy, predict

log = logging.getLogger(__name__)


class Step(Protocol):
    name: str

    def apply(self, model: nn.Module, ctx: "Context") -> nn.Module: ...

    def to_json(self) -> dict: ...


@dataclass(frozen=True)
class Context:
    """Data and training settings the steps share (fine-tuning, calibration, distillation)."""

    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray | None = field(repr=False)  # None: no labels (calibration only)
    X_test: np.ndarray = field(repr=False)
    y_test: np.ndarray | None = field(repr=False)
    epochs: int = 30        # full training (distillation), like the zoo recipe
    lr: float = 5e-3
    batch: int = 32
    seed: int = 0
    finetune_lr: float = 2e-3
    source: str = "zoo"     # what --data named (a zoo name, a file, module:function)
    metric: Any = field(default=None, repr=False, compare=False)  # evaluate.Metric; None: default

    @property
    def has_labels(self) -> bool:
        return self.y_train is not None

    @classmethod
    def for_zoo(cls, name: str, **overrides) -> "Context":
        from toolchain import models

        r = models.spec(name).recipe
        ctx = cls(*models.dataset(name), epochs=r.epochs, lr=r.lr, batch=r.batch, seed=r.seed,
                  source=name)
        return replace(ctx, **overrides)


@dataclass(frozen=True)
class Measure:
    accuracy: float | None  # top-1 percent when the metric is top1, else None
    params: int
    nonzeros: int
    macs: int
    macs_nonzero: int
    bytes: int
    metric: str = "top1"
    score: float | None = None

    @classmethod
    def of(cls, model: nn.Module, ctx: Context, reference: np.ndarray | None = None) -> "Measure":
        s: ModelStats = model_stats(model, ctx.X_test)
        metric = ctx.metric
        if metric is None:  # the zoo's default, as before
            acc = round(accuracy(model, ctx.X_test, ctx.y_test), 3)
            return cls(acc, **s.to_json(), metric="top1", score=acc)
        score = metric.score(predict(model, ctx.X_test), ctx.y_test, reference)
        score = round(score, 3) if metric.name in PERCENT else score
        return cls(score if metric.name == "top1" else None, **s.to_json(), metric=metric.name,
                   score=score)


@dataclass(frozen=True)
class StepRecord:
    step: str
    config: dict
    seconds: float
    before: Measure
    after: Measure


@dataclass
class CompressionReport:
    """What ``compress`` did; ``export`` is filled in by the caller after exporting."""

    model: str
    initial: Measure
    steps: list[StepRecord] = field(default_factory=list)
    export: dict | None = None
    reference: np.ndarray | None = field(default=None, repr=False)  # original model's outputs

    @property
    def final(self) -> Measure:
        return self.steps[-1].after if self.steps else self.initial

    def step_configs(self) -> list[dict]:
        return [s.config for s in self.steps]

    def to_json(self) -> dict:
        return {"model": self.model, "initial": asdict(self.initial),
                "steps": [asdict(s) for s in self.steps], "final": asdict(self.final),
                "export": self.export}


def check_io(model: nn.Module, ctx: Context) -> None:
    """ModelError unless the model maps a batch of the data to one tensor that fits the labels
    ((batch, classes) logits for class labels, the labels' shape for float targets)."""
    import torch

    x = torch.tensor(np.asarray(ctx.X_test[:2]))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the model cannot run on the data's input of shape "
                         f"{tuple(x.shape[1:])} ({x.dtype}): {text}") from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"the model must return logits of shape (batch, classes) or one "
                         f"output tensor; it returned a {type(out).__name__}")
    y = ctx.y_train
    if y is None or ctx.metric is not None and ctx.metric.user:
        return
    if y.dtype.kind in "iu":
        n_classes = int(max(np.max(y), np.max(ctx.y_test))) + 1
        if out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < n_classes:
            raise ModelError(f"the model must return logits of shape (batch, {n_classes}) for "
                             f"the data's class labels; it returned {tuple(out.shape)}")
    elif int(np.prod(y.shape[1:])) != int(np.prod(out.shape[1:])):
        raise ModelError(f"the data's targets are {y.shape[1:]} per sample, the model returns "
                         f"{tuple(out.shape[1:])}")


def compress(model: nn.Module, steps: Sequence[Step], ctx: Context,
             model_name: str = "model") -> tuple[nn.Module, CompressionReport]:
    """Apply ``steps`` in order to a copy of ``model``; returns (compressed model, report)."""
    from toolchain.compress.quantize import no_fastpath

    with no_fastpath():
        return _compress(model, steps, ctx, model_name)


def _compress(model, steps, ctx, model_name):
    model = copy.deepcopy(model).eval()
    check_io(model, ctx)
    for step in steps:  # before any slow work: a step that needs labels the data lacks
        need = getattr(step, "labels_needed", None)
        if need is not None:
            need(ctx)
    reference = predict(model, ctx.X_test) if ctx.metric is not None else None
    before = Measure.of(model, ctx, reference)
    report = CompressionReport(model_name, before, reference=reference)
    for step in steps:
        started = time.perf_counter()
        model = step.apply(model, ctx)
        seconds = round(time.perf_counter() - started, 2)
        after = Measure.of(model, ctx, reference)
        log.info("%s: %s %s -> %s, params %d -> %d, nonzeros %d -> %d, MACs %d -> %d",
                 step.name, after.metric, before.score, after.score, before.params, after.params,
                 before.nonzeros, after.nonzeros, before.macs, after.macs)
        report.steps.append(StepRecord(step.name, step.to_json(), seconds, before, after))
        before = after
    return model, report
