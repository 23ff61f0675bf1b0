"""Deterministic training and evaluation, shared by the zoo recipes and compression fine-tuning.

Determinism: one CPU thread (so float sums happen in one order), a seeded generator for the
initial weights and for the batch order. ``fit`` can mix in a teacher's soft targets
(knowledge distillation, Hinton et al. 2015) and re-applies pruning masks after every update, so
that fine-tuning after pruning never regrows a removed weight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolchain import progress

log = logging.getLogger(__name__)

MASK = "edgec_mask"  # buffer name of a permanent pruning mask on a Conv2d / Linear


@dataclass(frozen=True)
class Recipe:
    """How to train one zoo model: optimizer settings and the number of passes over the data."""

    epochs: int = 40
    lr: float = 3e-3
    batch: int = 32
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass(frozen=True)
class Distillation:
    """Soft targets from ``teacher`` at ``temperature``; ``alpha`` weighs them vs the labels."""

    teacher: nn.Module
    temperature: float = 4.0
    alpha: float = 0.7


def apply_masks(model: nn.Module) -> None:
    """Zero the weights that a permanent pruning mask removed."""
    with torch.no_grad():
        for m in model.modules():
            mask = getattr(m, MASK, None)
            if mask is not None and isinstance(getattr(m, "weight", None), nn.Parameter):
                m.weight.mul_(mask)


def fit(model: nn.Module, X: np.ndarray, y: np.ndarray, recipe: Recipe,
        distill: Distillation | None = None) -> nn.Module:
    """Train ``model`` in place with Adam and a cosine learning-rate schedule; returns it."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(recipe.seed)
    Xt, yt = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * ((len(Xt) + recipe.batch - 1) // recipe.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    if distill is not None:
        distill.teacher.eval()
    model.train()
    for _ in progress.bar(range(recipe.epochs), desc="training", unit="epoch"):
        order = torch.randperm(len(Xt), generator=gen)
        for i in range(0, len(Xt), recipe.batch):
            idx = order[i:i + recipe.batch]
            xb, yb = Xt[idx], yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if distill is not None:
                with torch.no_grad():
                    soft = F.softmax(distill.teacher(xb) / distill.temperature, dim=-1)
                kd = F.kl_div(F.log_softmax(logits / distill.temperature, dim=-1), soft,
                              reduction="batchmean") * distill.temperature ** 2
                loss = distill.alpha * kd + (1 - distill.alpha) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            apply_masks(model)
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray, batch: int = 512) -> np.ndarray:
    """Logits as a float32 numpy array (model in eval mode)."""
    torch.set_num_threads(1)
    model.eval()
    Xt = torch.tensor(np.asarray(X))
    return torch.cat([model(Xt[i:i + batch]) for i in range(0, len(Xt), batch)]).numpy()


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((predict(model, X).argmax(axis=1) == np.asarray(y)).mean() * 100.0)
