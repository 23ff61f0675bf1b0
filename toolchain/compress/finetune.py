"""Fine-tuning inside compression steps, on the run's own data and only with its labels.

Integer class labels with (N, C) outputs train with cross-entropy through the zoo's ``fit``
(unchanged numbers for the zoo); float targets train with mean squared error; distillation with
``alpha == 1`` needs no labels (the teacher's soft targets only). Anything else that would need
labels the data does not have is refused before a step starts: see ``labels_needed``.
Pruning masks are re-applied after each update (``apply_masks``), as in ``fit``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolchain import progress
from toolchain.errors import ConfigError
from toolchain.models.train import Distillation, Recipe, apply_masks, fit


def class_labels(y: np.ndarray | None) -> bool:
    return y is not None and np.asarray(y).dtype.kind in "iu"


def labels_needed(ctx, step: str, why: str) -> None:
    """ConfigError if the run's data has no labels and ``step`` needs them for ``why``."""
    if ctx.y_train is None:
        raise ConfigError(f"{step}: {why} needs labels, and the data has none (no y); give "
                          "labelled data, or leave it out (e.g. --epochs 0: calibration and "
                          "pruning without fine-tuning need no labels)")


def finetune(model: nn.Module, ctx, recipe: Recipe,
             distill: Distillation | None = None) -> nn.Module:
    """Train ``model`` in place on ``ctx``'s training split; returns it (eval mode)."""
    y = ctx.y_train
    if y is None and (distill is None or distill.alpha < 1.0):
        raise ConfigError("fine-tuning needs labels, and the data has none")
    if class_labels(y) and _is_classifier(model, ctx):
        return fit(model, ctx.X_train, y, recipe, distill)
    return _fit_regression(model, ctx.X_train, y, recipe, distill)


def _is_classifier(model: nn.Module, ctx) -> bool:
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(torch.tensor(np.asarray(ctx.X_train[:1])))
        model.train(was)
    return out.ndim == 2


def _fit_regression(model: nn.Module, X: np.ndarray, y: np.ndarray | None, recipe: Recipe,
                    distill: Distillation | None) -> nn.Module:
    """Adam + cosine schedule like ``fit``, with MSE to the targets and/or the teacher."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(recipe.seed)
    Xt = torch.tensor(np.asarray(X))
    yt = None if y is None else torch.tensor(np.asarray(y))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=recipe.lr,
                           weight_decay=recipe.weight_decay)
    steps = recipe.epochs * ((len(Xt) + recipe.batch - 1) // recipe.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    if distill is not None:
        distill.teacher.eval()
    model.train()
    for _ in progress.bar(range(recipe.epochs), desc="fine-tuning", unit="epoch"):
        order = torch.randperm(len(Xt), generator=gen)
        for i in range(0, len(Xt), recipe.batch):
            idx = order[i:i + recipe.batch]
            out = model(Xt[idx])
            loss = torch.zeros(())
            if yt is not None:
                target = yt[idx]
                if class_labels(np.asarray(target)):
                    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
                else:
                    loss = F.mse_loss(out, target.reshape(out.shape).to(out.dtype))
            if distill is not None:
                with torch.no_grad():
                    t_out = distill.teacher(Xt[idx])
                if out.ndim >= 2 and out.shape[-1] > 1:
                    T = distill.temperature
                    kd = F.kl_div(F.log_softmax(out / T, dim=-1), F.softmax(t_out / T, dim=-1),
                                  reduction="batchmean") * T ** 2
                else:
                    kd = F.mse_loss(out, t_out)
                loss = kd if yt is None else distill.alpha * kd + (1 - distill.alpha) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            apply_masks(model)
    model.eval()
    return model
