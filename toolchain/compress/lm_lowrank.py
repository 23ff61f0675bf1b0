"""LMLowRank: truncated-SVD factorization of a language model's MLP or attention Linears.

Before: a float model (not pruned, not quantized). After: each chosen Linear ``W [out, in]``
becomes, under the same name, a ``LowRankLinear``: ``up(down(x))`` with ``down = Linear(in, r,
bias=False)``, ``up = Linear(r, out)`` and ``W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)`` (the best
rank-r approximation, Eckart-Young), when that saves
parameters (``r (in + out) < in * out``); then the model is fine-tuned for ``steps`` on the
training text. Both factors are plain Linears, so they export as two MatMuls and quantize
like any other Linear. ``part`` chooses ``mlp`` (fc, proj), ``attn`` (q, k, v, o) or ``all``.
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

PARTS = {"mlp": ("mlp", "ffn", "feed_forward", "ff"), "attn": ("attn", "attention", "self_attn")}


def linears_in(model: nn.Module, part: str) -> list[tuple[str, nn.Linear]]:
    parents = PARTS["mlp"] + PARTS["attn"] if part == "all" else PARTS[part]
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(p in parents for p in n.split(".")[:-1])
            and not isinstance(model.get_submodule(n.rpartition(".")[0]), LowRankLinear)]


class LowRankLinear(nn.Module):
    """``up(down(x))``: a rank-r Linear. Named children (not an ``nn.Sequential``) so that the
    exporter's scopes give module paths such as ``blocks.0.mlp.fc.down``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def factorize(m: nn.Linear, rank: int) -> LowRankLinear:
    u, s, vh = torch.linalg.svd(m.weight.detach().double(), full_matrices=False)
    out = LowRankLinear(m.in_features, m.out_features, rank, bias=m.bias is not None)
    root = s[:rank].sqrt()  # split the singular values evenly: both factors alike in scale
    with torch.no_grad():
        out.down.weight.copy_((vh[:rank] * root[:, None]).float())
        out.up.weight.copy_((u[:, :rank] * root[None, :]).float())
        if m.bias is not None:
            out.up.bias.copy_(m.bias)
    return out


@dataclass(frozen=True)
class LMLowRank:
    name: ClassVar[str] = "lowrank"
    rank: int = 32
    part: str = "mlp"
    steps: int = 200
    lr: float | None = None

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"low-rank rank must be >= 1, got {self.rank}")
        if self.part not in ("mlp", "attn", "all"):
            raise ConfigError(f"low-rank part must be mlp, attn or all, got '{self.part}'")
        if self.steps < 0:
            raise ConfigError("low-rank fine-tuning steps must be >= 0")

    def to_json(self) -> dict:
        return {"step": self.name, "rank": self.rank, "part": self.part,
                "finetune_steps": self.steps}

    def apply(self, model: nn.Module, task) -> nn.Module:
        layers = linears_in(model, self.part)
        if not layers:
            raise UnsupportedOpError("none", type(model).__name__, "lowrank",
                                     f"the model has no Linear in its {self.part} modules")
        if any(hasattr(m, "weight_q") or hasattr(m, "edgec_mask") for _, m in layers):
            raise ConfigError("low-rank must come before prune and quantize")
        done = []
        for n, m in layers:
            if self.rank * (m.in_features + m.out_features) >= m.in_features * m.out_features:
                continue
            parent, _, attr = n.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr,
                    factorize(m, self.rank))
            done.append(n)
        if not done:
            raise ConfigError(f"rank {self.rank} saves no parameters in any {self.part} Linear")
        log.info("lowrank r=%d: %s", self.rank, ", ".join(done))
        finetune(model, task, self.steps, lr=self.lr, seed=13)
        return model.eval()
