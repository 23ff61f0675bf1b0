"""LowRank: factorize Linear and 1x1 Conv2d layers by truncated SVD, then fine-tune.

Before: a float model (not yet pruned or quantized). After: each Linear ``W (out x in)`` whose
factorization saves parameters is replaced, under the same name, by ``nn.Sequential(Linear(in,
r, bias=False), Linear(r, out))`` with ``W ~ (U_r S_r)(V_r^T)`` (1x1 convs likewise with two
1x1 convs). The rank ``r`` is the smallest that keeps ``energy`` of the squared singular values.
With ``params_ratio`` instead, one energy for all layers is found by bisection so that the whole
model has at most that fraction of its parameters (the benchmark's "half the parameters").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from toolchain.compress.quantize import check_supported, is_quantized
from toolchain.errors import ConfigError, UnsupportedOpError
from toolchain.compress.finetune import finetune, labels_needed
from toolchain.models.train import MASK, Recipe

log = logging.getLogger(__name__)


def _matrix(m: nn.Module) -> torch.Tensor | None:
    if isinstance(m, nn.Linear):
        return m.weight.detach()
    if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 \
            and m.padding in ((0, 0), 0, "valid") and m.dilation == (1, 1):
        return m.weight.detach().reshape(m.out_channels, m.in_channels)
    return None


def candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # nn.MultiheadAttention reads out_proj.weight itself: a factorized out_proj would break it
    inside_mha = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return [(n, m) for n, m in model.named_modules()
            if _matrix(m) is not None and id(m) not in inside_mha]


def rank_for(s: torch.Tensor, energy: float) -> int:
    e = torch.cumsum(s ** 2, 0) / torch.sum(s ** 2).clamp_min(1e-30)
    return int(torch.searchsorted(e, torch.tensor(energy - 1e-9)).item()) + 1


def _plan(layers, energy: float) -> dict[str, int]:
    """Rank per layer name, only for layers where factorizing saves parameters."""
    plan = {}
    for name, m in layers:
        w = _matrix(m)
        r = rank_for(torch.linalg.svdvals(w), energy)
        if r * (w.shape[0] + w.shape[1]) < w.shape[0] * w.shape[1]:
            plan[name] = r
    return plan


def _saved(layers, plan) -> int:
    total = 0
    for name, m in layers:
        if name in plan:
            o, i = _matrix(m).shape
            total += o * i - plan[name] * (o + i)
    return total


def _factor(m: nn.Module, r: int) -> nn.Sequential:
    w = _matrix(m)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    a = (vh[:r]).contiguous()                # r x in
    b = (u[:, :r] * s[:r]).contiguous()      # out x r
    o, i = w.shape
    if isinstance(m, nn.Linear):
        first, second = nn.Linear(i, r, bias=False), nn.Linear(r, o, bias=m.bias is not None)
    else:
        first = nn.Conv2d(i, r, 1, stride=m.stride, bias=False)
        second = nn.Conv2d(r, o, 1, bias=m.bias is not None)
        a, b = a.reshape(r, i, 1, 1), b.reshape(o, r, 1, 1)
    with torch.no_grad():
        first.weight.copy_(a)
        second.weight.copy_(b)
        if m.bias is not None:
            second.bias.copy_(m.bias)
    return nn.Sequential(first, second)


@dataclass(frozen=True)
class LowRank:
    name: ClassVar[str] = "lowrank"
    energy: float | None = 0.9
    params_ratio: float | None = None
    epochs: int = 10

    def __post_init__(self):
        if (self.energy is None) == (self.params_ratio is None):
            raise ConfigError("lowrank needs exactly one of energy or params_ratio")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"lowrank energy must be in (0, 1], got {self.energy}")
        if self.params_ratio is not None and not 0.0 < self.params_ratio < 1.0:
            raise ConfigError(f"lowrank params_ratio must be in (0, 1), got {self.params_ratio}")

    def to_json(self) -> dict:
        return {"step": self.name, "energy": self.energy, "params_ratio": self.params_ratio,
                "epochs": self.epochs}

    def labels_needed(self, ctx) -> None:
        if self.epochs:
            labels_needed(ctx, self.name, f"fine-tuning ({self.epochs} epochs)")

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        check_supported(model, self.name)
        if is_quantized(model) or any(hasattr(m, MASK) for m in model.modules()):
            raise ConfigError("lowrank must come before prune and quantize "
                              "(it would undo their zeros and scales)")
        layers = candidates(model)
        if not layers:
            raise UnsupportedOpError("none", type(model).__name__, self.name,
                                     "the model has no Linear or 1x1 Conv2d layer to factorize")
        energy = self.energy
        if self.params_ratio is not None:
            total = sum(p.numel() for p in model.parameters())
            need = total - int(self.params_ratio * total)
            lo, hi = 0.0, 1.0
            if _saved(layers, _plan(layers, 1e-6)) < need:
                raise ConfigError(f"lowrank: even rank 1 cannot reach {self.params_ratio:.0%} "
                                  "of the parameters for this model")
            for _ in range(40):  # largest energy that still saves enough
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if _saved(layers, _plan(layers, mid)) >= need else (lo, mid)
            energy = lo
        plan = _plan(layers, energy)
        if not plan:
            raise UnsupportedOpError("Linear", layers[0][0], self.name,
                                     f"no layer saves parameters at energy {energy}")
        for name, m in layers:
            if name in plan:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, attr, _factor(m, plan[name]))
        log.info("lowrank: energy %.4f, ranks %s", energy, plan)
        if self.epochs:
            finetune(model, ctx,
                     Recipe(epochs=self.epochs, lr=ctx.finetune_lr, batch=ctx.batch, seed=ctx.seed))
        return model.eval()
