"""LMPrune: magnitude or 2:4 structured pruning of a language model's MLP Linears, fine-tuned.

Before: a float model (not yet quantized). After: the MLP Linears (``mlp_linears``) have a
fraction ``sparsity`` of zero weights, either unstructured (smallest magnitudes of each layer)
or in the 2:4 pattern (in every run of 4 consecutive inputs of an output row, the 2 of smallest
magnitude are zero: NVIDIA's sparse tensor-core / Arm's structured-sparsity layout, groups
along the reduction axis K, i.e. 4 consecutive rows of the ONNX MatMul's ``B [K, N]``).

Library: ``torch.ao.pruning.WeightNormSparsifier`` computes the masks (2:4 is its
``sparse_block_shape=(1, 4), zeros_per_block=2``; unstructured is ``(1, 1)`` blocks at
``sparsity_level``) and keeps them as parametrizations while the model is fine-tuned for
``steps`` on the training text, so no pruned weight regrows; ``squash_mask`` then makes the
zeros plain weights. Each layer also keeps an ``edgec_mask`` buffer, so later fine-tuning
(distillation) re-applies it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from toolchain.compress.lm_task import finetune
from toolchain.errors import ConfigError, UnsupportedOpError

log = logging.getLogger(__name__)

MASK = "edgec_mask"
MLP_PARTS = ("mlp", "ffn", "feed_forward", "ff")


def mlp_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Linears inside a module named ``mlp`` (or ffn / feed_forward / ff)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(p in MLP_PARTS for p in n.split(".")[:-1])]


def parse_pattern(text: str | float) -> tuple[str, float]:
    """``"2:4"`` -> ("2:4", 0.5); ``0.5`` / ``"0.5"`` -> ("magnitude", 0.5)."""
    if isinstance(text, str) and ":" in text:
        if text.strip() != "2:4":
            raise ConfigError(f"only the 2:4 structured pattern is supported, got '{text}'")
        return "2:4", 0.5
    try:
        s = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"prune takes 2:4 or a sparsity in (0, 1), got '{text}'") from None
    if not 0.0 < s < 1.0:
        raise ConfigError(f"prune sparsity must be in (0, 1), got {s}")
    return "magnitude", s


def sparsity_of(layers: list[tuple[str, nn.Module]]) -> float:
    total = sum(m.weight.numel() for _, m in layers)
    return sum(int((m.weight == 0).sum()) for _, m in layers) / max(total, 1)


def is_2_4(w: torch.Tensor) -> bool:
    """Every run of 4 consecutive inputs of every row has at least 2 zeros."""
    if w.shape[1] % 4:
        return False
    return bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


@dataclass(frozen=True)
class LMPrune:
    name: ClassVar[str] = "prune"
    pattern: str = "2:4"          # "2:4" or "magnitude"
    sparsity: float = 0.5
    steps: int = 200              # fine-tuning steps with the masks held
    lr: float | None = None

    def __post_init__(self):
        if self.pattern not in ("2:4", "magnitude"):
            raise ConfigError(f"prune pattern must be 2:4 or magnitude, got {self.pattern}")
        if not 0.0 < self.sparsity < 1.0 or (self.pattern == "2:4" and self.sparsity != 0.5):
            raise ConfigError(f"bad prune sparsity {self.sparsity} for pattern {self.pattern}")
        if self.steps < 0:
            raise ConfigError("prune fine-tuning steps must be >= 0")

    @classmethod
    def parse(cls, text: str | float, **kw) -> "LMPrune":
        pattern, sparsity = parse_pattern(text)
        return cls(pattern=pattern, sparsity=sparsity, **kw)

    def to_json(self) -> dict:
        return {"step": self.name, "pattern": self.pattern, "sparsity": self.sparsity,
                "layers": "mlp", "finetune_steps": self.steps}

    def apply(self, model: nn.Module, task) -> nn.Module:
        from torch.ao.pruning import WeightNormSparsifier

        layers = mlp_linears(model)
        if not layers:
            raise UnsupportedOpError("none", type(model).__name__, "prune",
                                     "the model has no Linear inside a module named mlp")
        if any(hasattr(m, "weight_q") for _, m in layers):
            raise ConfigError("prune must come before quantize")
        if self.pattern == "2:4":
            bad = [n for n, m in layers if m.in_features % 4]
            if bad:
                raise ConfigError(f"2:4 pruning needs in_features divisible by 4: {bad[0]}")
            sp = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4),
                                      zeros_per_block=2)
        else:
            sp = WeightNormSparsifier(sparsity_level=self.sparsity, sparse_block_shape=(1, 1),
                                      zeros_per_block=1)
        sp.prepare(model, [{"tensor_fqn": f"{n}.weight"} for n, _ in layers])
        sp.step()
        finetune(model, task, self.steps, lr=self.lr, seed=11)
        sp.squash_mask()
        for n, _ in layers:  # squash_mask puts back fresh modules' weights; keep the masks
            m = model.get_submodule(n)
            mask = (m.weight.detach() != 0).float()
            if hasattr(m, MASK):
                getattr(m, MASK).copy_(mask)
            else:
                m.register_buffer(MASK, mask)
        log.info("prune %s: MLP sparsity %.3f", self.pattern, sparsity_of(mlp_linears(model)))
        return model.eval()


def apply_masks(model: nn.Module) -> None:
    """Zero again the weights a prune step removed (after an optimizer update)."""
    with torch.no_grad():
        for m in model.modules():
            mask = getattr(m, MASK, None)
            if mask is not None:
                m.weight.mul_(mask)
