"""Read-only analyses of a PyTorch model: parameters, non-zeros, MACs and bytes.

- ``params``: number of parameter elements (pruned weights still count: they are stored).
- ``nonzeros``: parameter elements that are not zero.
- ``macs``: multiply-accumulates for one sample: Conv2d and Linear layers, LSTM / GRU / RNN
  layers (gates x hidden x (input + hidden) per layer and time step), plus any module with
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


_RECURRENT_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _recurrent_macs(m: nn.Module, x: torch.Tensor) -> int:
    """MACs of one sample through a recurrent stack (torch's FLOP counter does not count it)."""
    gates = next(g for t, g in _RECURRENT_GATES.items() if isinstance(m, t))
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = int(x.batch_sizes.sum())  # all samples' steps; the batch is one sample here
    else:
        steps = x.shape[1] if m.batch_first and x.dim() == 3 else x.shape[0]
    dirs = 2 if m.bidirectional else 1
    out = getattr(m, "proj_size", 0) or m.hidden_size
    total = 0
    for layer in range(m.num_layers):
        width = m.input_size if layer == 0 else out * dirs
        total += gates * m.hidden_size * (width + out) + (m.hidden_size * out
                                                          if out != m.hidden_size else 0)
    return int(steps * dirs * total)


def _weight_density(m: nn.Module) -> float:
    ws = [p.detach() for n, p in m.named_parameters(recurse=False) if n.startswith("weight")]
    total = sum(w.numel() for w in ws)
    return float(sum(int((w != 0).sum()) for w in ws) / total) if total else 1.0


def count_macs(model: nn.Module, example: np.ndarray) -> tuple[int, int]:
    """(dense MACs, density-weighted MACs) for one sample shaped like ``example[0]``."""
    totals = [0.0, 0.0]

    def hook(m, inputs, output):
        if isinstance(m, nn.Conv2d):
            per_out = m.in_channels // m.groups * int(np.prod(m.kernel_size))
            n = output[0].numel() * per_out
        elif isinstance(m, nn.Linear):
            n = output[0].numel() * m.in_features
        elif isinstance(m, tuple(_RECURRENT_GATES)):
            n = _recurrent_macs(m, inputs[0])
            totals[0] += n
            totals[1] += n * _weight_density(m)
            return
        else:
            n = m.macs(inputs, output)
            totals[0] += n
            totals[1] += n
            return
        density = float((_weight(m) != 0).float().mean())
        totals[0] += n
        totals[1] += n * density

    kinds = (nn.Conv2d, nn.Linear) + tuple(_RECURRENT_GATES)
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, kinds) or callable(getattr(m, "macs", None))]
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


def _graph_macs(model: nn.Module, example: np.ndarray) -> int:
    """MACs of a model with no Conv2d / Linear modules (a torch.export program), from torch's
    FLOP counter on its aten ops (2 FLOPs per multiply-accumulate)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.tensor(np.asarray(example[:1])))
    return int(counter.get_total_flops() // 2)


def _recurrent_only(model: nn.Module, example: np.ndarray) -> int:
    """MACs of the recurrent layers alone (torch's FLOP counter leaves them out)."""
    found = []
    handles = [m.register_forward_hook(lambda m, i, o: found.append(_recurrent_macs(m, i[0])))
               for m in model.modules() if isinstance(m, tuple(_RECURRENT_GATES))]
    if not handles:
        return 0
    try:
        with torch.no_grad():
            model(torch.tensor(np.asarray(example[:1])))
    finally:
        for h in handles:
            h.remove()
    return int(sum(found))


# layers count_macs does not know: their models are counted by torch's FLOP counter instead
_OTHER_LAYERS = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d, nn.MultiheadAttention)


def _program_tensors(program: nn.Module, weight_bits: int = 8):
    """(tensor, bits) the graph of a torch.export / torchao program reads: its parameters,
    and torchao's int8 weights (buffers; with ``weight_bits`` 4, a buffer whose codes are all
    in [-7, 7] counts 4 bits per code, as the export packs it); scales and zero points are
    left out."""
    params, bufs = dict(program.named_parameters()), dict(program.named_buffers())
    for node in program.graph.nodes:
        if node.op != "get_attr":
            continue
        if node.target in params:
            yield params[node.target].detach(), 32
        elif node.target in bufs and bufs[node.target].dtype == torch.int8:
            buf = bufs[node.target]
            small = buf.numel() and int(buf.abs().max()) <= 7
            yield buf, 4 if weight_bits == 4 and small else 8


def model_stats(model: nn.Module, example: np.ndarray) -> ModelStats:
    params = nonzeros = 0
    nbytes = 0.0
    program = getattr(model, "program", None)
    if program is not None and hasattr(program, "graph"):  # a torch.export / torchao program
        for t, bits in _program_tensors(program, getattr(model, "weight_bits", 8)):
            params += t.numel()
            nonzeros += int((t != 0).sum())
            nbytes += t.numel() * bits / 8
        macs = _graph_macs(model, example)
        return ModelStats(params, nonzeros, macs, macs, int(np.ceil(nbytes)))
    for m in model.modules():
        for pname, p in m.named_parameters(recurse=False):
            params += p.numel()
            nonzeros += int((p.detach() != 0).sum())
            bits = m.weight_bits if isinstance(m, QuantLayer) and pname == "weight" else 32
            nbytes += p.numel() * bits / 8
    if any(isinstance(m, _OTHER_LAYERS) for m in model.modules()):
        macs = _graph_macs(model, example) + _recurrent_only(model, example)
        return ModelStats(params, nonzeros, macs, macs, int(np.ceil(nbytes)))
    macs, macs_nz = count_macs(model, example)
    return ModelStats(params, nonzeros, macs, macs_nz, int(np.ceil(nbytes)))
