"""Prune: unstructured magnitude pruning of convolution / Linear weights, with fine-tuning.

Before: any model with Conv1d/2d/3d, ConvTranspose or Linear layers. After: the same model in which a fraction
``sparsity`` of those weights are exactly zero, either in every layer (``scope="layer"``) or
over all layers together (``scope="global"``: smaller-magnitude layers lose more). The masks are
computed by ``torch.nn.utils.prune`` (L1Unstructured), reached in ``rounds`` equal steps with
fine-tuning after each, and kept as an ``edgec_mask`` buffer on each layer so that later
fine-tuning (QAT, distillation) never regrows a pruned weight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.utils.prune as tprune
from torch import nn

from toolchain.compress.quantize import check_supported
from toolchain.errors import ConfigError, UnsupportedOpError
from toolchain.compress.finetune import finetune, labels_needed
from toolchain.models.train import MASK, Recipe

log = logging.getLogger(__name__)

SCOPES = ("layer", "global")


# magnitude pruning only needs a weight tensor: every convolution kind and Linear
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros among all Conv2d / Linear weights."""
    layers = prunable_layers(model)
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight.detach() == 0).sum()) for _, m in layers)
    return zeros / total if total else 0.0


def _keep_mask(m: nn.Module) -> None:
    """Make torch's pruning permanent and remember the mask as a buffer."""
    tprune.remove(m, "weight")
    mask = (m.weight.detach() != 0).to(m.weight.dtype)
    if hasattr(m, MASK):
        getattr(m, MASK).copy_(mask)
    else:
        m.register_buffer(MASK, mask)


@dataclass(frozen=True)
class Prune:
    name: ClassVar[str] = "prune"
    sparsity: float = 0.5
    scope: str = "layer"
    rounds: int = 3
    epochs: int = 10  # fine-tuning epochs after each round

    def __post_init__(self):
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"prune sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown prune scope '{self.scope}'; use layer or global")
        if self.rounds < 1 or self.epochs < 0:
            raise ConfigError("prune rounds must be >= 1 and epochs >= 0")

    def to_json(self) -> dict:
        return {"step": self.name, "sparsity": self.sparsity, "scope": self.scope,
                "rounds": self.rounds, "epochs": self.epochs}

    def labels_needed(self, ctx) -> None:
        if self.epochs:
            labels_needed(ctx, self.name, f"fine-tuning ({self.epochs} epochs per round)")

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        check_supported(model, self.name, PRUNABLE)
        layers = [m for _, m in prunable_layers(model)]
        if not layers:
            raise UnsupportedOpError("none", type(model).__name__, self.name,
                                     "the model has no Conv2d or Linear layer to prune")
        start = weight_sparsity(model)
        for r in range(1, self.rounds + 1):
            target = start + (self.sparsity - start) * r / self.rounds
            if self.scope == "global":
                total = sum(m.weight.numel() for m in layers)
                tprune.global_unstructured([(m, "weight") for m in layers], tprune.L1Unstructured,
                                           amount=int(round(target * total)))
            else:
                for m in layers:
                    tprune.l1_unstructured(m, "weight", amount=int(round(target * m.weight.numel())))
            for m in layers:
                _keep_mask(m)
            log.info("prune round %d: sparsity %.3f", r, weight_sparsity(model))
            if self.epochs:
                finetune(model, ctx,
                         Recipe(epochs=self.epochs, lr=ctx.finetune_lr, batch=ctx.batch,
                                seed=ctx.seed + r))
        return model.eval()
