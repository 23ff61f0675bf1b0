"""Run a list of compression steps on a model and record what each one changed.

A step is a small frozen dataclass with a ``name``, ``apply(model, ctx) -> model`` and
``to_json()`` (see prune.py, channels.py, quantize.py, distill.py, lowrank.py). ``compress``
copies the model, applies the steps in the given order and measures accuracy (PyTorch, on the
test split), parameters, non-zeros, MACs and bytes before and after each one.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol, Sequence

import numpy as np
from torch import nn

from toolchain.compress.metrics import ModelStats, model_stats
from toolchain.errors import ModelError
from toolchain.models.train import accuracy

log = logging.getLogger(__name__)


class Step(Protocol):
    name: str

    def apply(self, model: nn.Module, ctx: "Context") -> nn.Module: ...

    def to_json(self) -> dict: ...


@dataclass(frozen=True)
class Context:
    """Data and training settings the steps share (fine-tuning, calibration, distillation)."""

    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    X_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    epochs: int = 30        # full training (distillation), like the zoo recipe
    lr: float = 5e-3
    batch: int = 32
    seed: int = 0
    finetune_lr: float = 2e-3

    @classmethod
    def for_zoo(cls, name: str, **overrides) -> "Context":
        from toolchain import models

        r = models.spec(name).recipe
        ctx = cls(*models.dataset(name), epochs=r.epochs, lr=r.lr, batch=r.batch, seed=r.seed)
        return replace(ctx, **overrides)


@dataclass(frozen=True)
class Measure:
    accuracy: float
    params: int
    nonzeros: int
    macs: int
    macs_nonzero: int
    bytes: int

    @classmethod
    def of(cls, model: nn.Module, ctx: Context) -> "Measure":
        s: ModelStats = model_stats(model, ctx.X_test)
        return cls(round(accuracy(model, ctx.X_test, ctx.y_test), 3), **s.to_json())


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
    """ModelError unless the model maps a batch of the data to a (batch, classes) tensor."""
    import torch

    x = torch.tensor(np.asarray(ctx.X_test[:2]))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise ModelError(f"the model cannot run on the data's input of shape "
                         f"{tuple(x.shape[1:])}: {str(exc).strip().splitlines()[0]}") from None
    n_classes = int(np.max(ctx.y_train)) + 1
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the model must return logits of shape (batch, {n_classes}); "
                         f"it returned {got}")


def compress(model: nn.Module, steps: Sequence[Step], ctx: Context,
             model_name: str = "model") -> tuple[nn.Module, CompressionReport]:
    """Apply ``steps`` in order to a copy of ``model``; returns (compressed model, report)."""
    model = copy.deepcopy(model).eval()
    check_io(model, ctx)
    before = Measure.of(model, ctx)
    report = CompressionReport(model_name, before)
    for step in steps:
        started = time.perf_counter()
        model = step.apply(model, ctx)
        seconds = round(time.perf_counter() - started, 2)
        after = Measure.of(model, ctx)
        log.info("%s: accuracy %.2f -> %.2f, params %d -> %d, nonzeros %d -> %d, MACs %d -> %d",
                 step.name, before.accuracy, after.accuracy, before.params, after.params,
                 before.nonzeros, after.nonzeros, before.macs, after.macs)
        report.steps.append(StepRecord(step.name, step.to_json(), seconds, before, after))
        before = after
    return model, report
