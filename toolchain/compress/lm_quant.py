"""Weight-only quantization of a language model's Linear layers: int8 per channel, int4 per group.

Grid (symmetric, no zero point, as llama.cpp Q4_0 and ExecuTorch's 8da4w weights): a weight
row ``w`` of a Linear (out x in) is cut into groups of ``G`` inputs (int8: one group, the whole
row); each group has one float32 scale ``s = max|w| / ((qmax - qmin) / 2)`` (``/ 127.5`` for
int8, ``/ 7.5`` for int4, the convention of torchao's ``MappingType.SYMMETRIC``) and codes
``q = clamp(round(w * (1 / s)), qmin, qmax)`` in [-128, 127] or [-8, 7]. The deployed weight
is ``q * s``.

Methods:

- ``rtn``: round to nearest on that grid.
- ``gptq``: GPTQ (Frantar et al., 2022): columns are quantized one at a time and each one's
  rounding error is spread over the columns not yet quantized through the inverse Hessian
  ``H = X^T X`` of the layer's inputs, which minimizes ``||X W^T - X Q^T||``. The inputs are
  collected on calibration windows of the training text, layer by layer in execution order with
  the layers before already quantized (sequential GPTQ), with 1% damping and lazy block updates.
  A group's scale is chosen when the algorithm reaches its first column, from the weights as
  updated so far.

Library choice: torchao 0.18 was tried. Its ``IntxWeightOnlyConfig`` (per-group symmetric int4 /
per-channel int8) runs on CPU and gives exactly this grid; the tests use it as the reference
(codes and scales must be equal). It is not used at run time because (1) its GPTQ
(``torchao.prototype.gptq``) asserts a CUDA device and its int4 path needs ``mslk`` (an
asymmetric CUDA layout), and its AWQ prototype goes through the same CUDA int4 tensors;
(2) its quantized weights are tensor subclasses that ``torch.onnx.export`` does not write as
QDQ, while the export here must be exactly ``DequantizeLinear(Wq, scale)`` before each MatMul;
(3) importing it takes ~4 s and logs warnings about CUDA libraries. So the grid and GPTQ are
written here (a hundred lines) and torchao checks them.

After quantization each Linear is a ``QuantizedLinear`` (a subclass of ``nn.Linear``, so any
exporter that walks Linears sees it) whose ``weight`` holds the dequantized values and whose
buffers ``weight_q`` (int8 codes, out x in) and ``weight_scale`` (float32, out x groups) are
what lm_qdq.py writes into the ONNX file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from toolchain.errors import ConfigError, UnsupportedOpError

log = logging.getLogger(__name__)

BITS = {8: (-128, 127), 4: (-8, 7)}
METHODS = ("rtn", "gptq")


def _groups(w: torch.Tensor, group: int | None) -> int:
    k = w.shape[1]
    if group is None:
        return 1
    if k % group:
        raise ConfigError(f"group size {group} does not divide the layer's {k} inputs")
    return k // group


def scales_for(w: torch.Tensor, bits: int, group: int | None) -> torch.Tensor:
    """Symmetric scales ``[out, groups]`` for weight ``w`` ``[out, in]``."""
    qmin, qmax = BITS[bits]
    g = w.reshape(w.shape[0], _groups(w, group), -1)
    amax = g.abs().amax(dim=-1)
    return (amax / (float(qmax - qmin) / 2)).clamp(min=torch.finfo(torch.float32).smallest_normal)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of ``w`` ``[out, in]`` on the grid of ``scale`` ``[out, groups]`` (int8 tensor)."""
    qmin, qmax = BITS[bits]
    per = w.shape[1] // scale.shape[1]
    s = scale.repeat_interleave(per, dim=1)
    return torch.clamp(torch.round(w * (1.0 / s)), qmin, qmax).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    per = q.shape[1] // scale.shape[1]
    return q.float() * scale.repeat_interleave(per, dim=1)


def rtn(w: torch.Tensor, bits: int, group: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round to nearest: (codes int8 [out, in], scales float32 [out, groups])."""
    w = w.detach().float()
    scale = scales_for(w, bits, group)
    return quantize_codes(w, scale, bits), scale


def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int, group: int | None,
         damp: float = 0.01, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ with lazy block updates: (codes [out, in], scales [out, groups]).

    ``hessian`` is ``X^T X`` (in x in) of the layer's inputs on calibration data. Weights that
    are exactly zero (pruned) stay zero: they are "quantized" to 0 and their error is spread
    like any other, so GPTQ after pruning keeps the sparsity pattern.
    """
    qmin, qmax = BITS[bits]
    W = w.detach().double().clone()
    keep = W != 0
    n_out, k = W.shape
    H = hessian.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k, dtype=H.dtype)
    # upper Cholesky factor of H^-1: row i holds the update coefficients of column i
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    G = group or k
    n_groups = _groups(W, group)
    block = G * max(1, block // G) if group else min(block, k)
    scale = torch.zeros(n_out, n_groups, dtype=torch.float64)
    if group is None:
        scale[:, 0] = scales_for(W.float(), bits, None)[:, 0].double()
    Q = torch.zeros(n_out, k, dtype=torch.int8)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        Hb = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group and col % G == 0:  # the group's scale, from its weights as updated so far
                kept = W1[:, i:i + G] * keep[:, col:col + G]
                scale[:, col // G] = scales_for(kept.float(), bits, None)[:, 0].double()
            s = scale[:, col // G].float()
            q = torch.clamp(torch.round(W1[:, i].float() * (1.0 / s)), qmin, qmax)
            q = q * keep[:, col]
            Q[:, col] = q.to(torch.int8)
            err = (W1[:, i] - q.double() * s.double()) / Hb[i, i]
            W1[:, i:] -= err[:, None] * Hb[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return Q, scale.float()


class QuantizedLinear(nn.Linear):
    """A Linear whose weight is fake-quantized: ``weight == weight_q * weight_scale``.

    The weight is frozen (weight-only PTQ); the bias stays float32 and trainable.
    """

    def __init__(self, src: nn.Linear, q: torch.Tensor, scale: torch.Tensor, bits: int,
                 group: int | None, method: str):
        super().__init__(src.in_features, src.out_features, bias=src.bias is not None)
        self.bits, self.group, self.method = bits, group, method
        self.register_buffer("weight_q", q.to(torch.int8).contiguous())
        self.register_buffer("weight_scale", scale.float().contiguous())
        with torch.no_grad():
            self.weight.copy_(dequantize(self.weight_q, self.weight_scale))
            if src.bias is not None:
                self.bias.copy_(src.bias)
        self.weight.requires_grad_(False)

    def storage_bytes(self) -> float:
        """Codes at ``bits`` each plus one float32 scale per group."""
        return self.weight_q.numel() * self.bits / 8 + self.weight_scale.numel() * 4

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int{self.bits}, group={self.group}, {self.method}"


def quantizable(model: nn.Module, skip: tuple[str, ...] = ()) -> list[tuple[str, nn.Linear]]:
    """Linears to quantize: all but those named in ``skip`` and those whose weight is tied to
    another module (a head tied to the embedding stays float, stored once)."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not isinstance(m, QuantizedLinear)
            and n not in skip and owners.get(id(m.weight), 0) == 1]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _execution_order(model: nn.Module, layers: list[tuple[str, nn.Linear]],
                     ids: torch.Tensor) -> list[tuple[str, nn.Linear]]:
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: order.append(n) if n not in order
                                         else None) for n, m in layers]
    try:
        with torch.no_grad():
            model(ids[:1])
    finally:
        for h in hooks:
            h.remove()
    by_name = dict(layers)
    return [(n, by_name[n]) for n in order] + [(n, m) for n, m in layers if n not in order]


def input_hessian(model: nn.Module, layer: nn.Module, ids: torch.Tensor,
                  batch: int = 8) -> torch.Tensor:
    """``X^T X / rows`` (float64) of ``layer``'s inputs while the model runs on ``ids``."""
    acc = {"h": torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64), "n": 0}

    def hook(mod, inp):
        x = inp[0].detach().reshape(-1, layer.in_features).double()
        acc["h"] += x.T @ x
        acc["n"] += x.shape[0]

    h = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for i in range(0, len(ids), batch):
                model(ids[i:i + batch])
    finally:
        h.remove()
    return acc["h"] / max(acc["n"], 1)


@dataclass(frozen=True)
class LMQuantize:
    """Weight-only quantization step (see the module docstring)."""

    name: ClassVar[str] = "quantize"
    bits: int = 4
    group_size: int | None = 32  # None: one scale per output channel (int8's default)
    method: str = "rtn"
    calibration_windows: int = 32
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        if self.bits not in BITS:
            raise ConfigError(f"weight bits must be 8 or 4, got {self.bits}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown quantization method '{self.method}'; use "
                              + " or ".join(METHODS))
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"group size must be >= 1, got {self.group_size}")
        if self.bits == 4 and self.group_size is None:
            raise ConfigError("int4 needs a group size (e.g. 32 or 64)")

    @property
    def mode(self) -> str:
        return f"int{self.bits}"

    def to_json(self) -> dict:
        return {"step": self.name, "mode": self.mode, "group_size": self.group_size,
                "method": self.method, "calibration_windows": self.calibration_windows,
                "symmetric": True}

    def apply(self, model: nn.Module, task) -> nn.Module:
        layers = quantizable(model, self.skip)
        if not layers:
            raise UnsupportedOpError("none", type(model).__name__, "quantize",
                                     "the model has no untied nn.Linear layer to quantize")
        for n, m in layers:
            if self.group_size is not None and m.in_features % self.group_size:
                raise ConfigError(f"group size {self.group_size} does not divide the "
                                  f"{m.in_features} inputs of layer '{n}'")
        model.eval()
        if self.method == "rtn":
            for n, m in layers:
                q, s = rtn(m.weight, self.bits, self.group_size)
                _replace(model, n, QuantizedLinear(m, q, s, self.bits, self.group_size, "rtn"))
            return model
        ids = task.calibration(self.calibration_windows)
        for n, m in _execution_order(model, layers, ids):
            H = input_hessian(model, m, ids)
            q, s = gptq(m.weight, H, self.bits, self.group_size)
            _replace(model, n, QuantizedLinear(m, q, s, self.bits, self.group_size, "gptq"))
            log.debug("gptq %s: %s", n, tuple(q.shape))
        return model


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
