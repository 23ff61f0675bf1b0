"""Read-only analyses of a PyTorch model: parameters, non-zeros, MACs and bytes.

- ``params``: number of parameter elements (pruned weights still count: they are stored).
- ``nonzeros``: parameter elements that are not zero.
- ``macs``: multiply-accumulates for one sample: Conv2d and Linear layers, plus any module with
  a ``macs(inputs, output)`` method (the zoo's attention counts its two matmuls that way).
- ``macs_nonzero``: the same with each layer's MACs scaled by its weight density (what a
  sparse kernel or an FPGA that skips zero weights would do).
- ``bytes``: weight storage: quantized Conv2d/Linear weights at their bit width, every other
  parameter as float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from toolchain.compress.quantize import QuantLayer


@dataclass(frozen=True)
class ModelStats:
    params: int
    nonzeros: int
    macs: int
    macs_nonzero: int
    bytes: int

    def to_json(self) -> dict:
        return asdict(self)


def _weight(m: nn.Module) -> torch.Tensor:
    return m.weight.detach()


def count_macs(model: nn.Module, example: np.ndarray) -> tuple[int, int]:
    """(dense MACs, density-weighted MACs) for one sample shaped like ``example[0]``."""
    totals = [0.0, 0.0]

    def hook(m, inputs, output):
        if isinstance(m, nn.Conv2d):
            per_out = m.in_channels // m.groups * int(np.prod(m.kernel_size))
            n = output[0].numel() * per_out
        elif isinstance(m, nn.Linear):
            n = output[0].numel() * m.in_features
        else:
            n = m.macs(inputs, output)
            totals[0] += n
            totals[1] += n
            return
        density = float((_weight(m) != 0).float().mean())
        totals[0] += n
        totals[1] += n * density

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) or callable(getattr(m, "macs", None))]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(torch.tensor(np.asarray(example[:1])))
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return int(totals[0]), int(round(totals[1]))


def model_stats(model: nn.Module, example: np.ndarray) -> ModelStats:
    params = nonzeros = 0
    nbytes = 0.0
    for m in model.modules():
        for pname, p in m.named_parameters(recurse=False):
            params += p.numel()
            nonzeros += int((p.detach() != 0).sum())
            bits = m.weight_bits if isinstance(m, QuantLayer) and pname == "weight" else 32
            nbytes += p.numel() * bits / 8
    macs, macs_nz = count_macs(model, example)
    return ModelStats(params, nonzeros, macs, macs_nz, int(np.ceil(nbytes)))
