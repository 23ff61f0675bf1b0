"""Structured channel pruning with torch-pruning's dependency graph (residuals, attention).

The fx channel remover in ``channels.py`` leaves alone any layer whose output reaches an Add or
a Concat, which is every residual block. torch-pruning (1.6, ``DependencyGraph`` +
``MetaPruner``) traces the model and groups every tensor dimension that must shrink together:
both sides of a residual Add, depthwise convs' groups, batchnorms, concats, and
``nn.MultiheadAttention``'s embedding (head count kept, ``num_heads`` given per module), and
the hidden units of LSTM / GRU / RNN layers (``rnn_channels.py``: torch-pruning's own LSTM
pruner is broken, see there).
Channels are ranked by the L1 norm of each group's weights (``MagnitudeImportance(p=1)``).

The layers that produce the model's output keep their outputs (found by running the model
once with forward hooks), so the output shape never changes; a model whose output shape
changes anyway is refused.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from toolchain.compress import rnn_channels
from toolchain.compress.rnn_channels import RECURRENT
from toolchain.errors import ModelError, UnsupportedOpError

log = logging.getLogger(__name__)

# torch-pruning's default group roots (its own LSTM pruner is replaced: rnn_channels.py)
ROOTS = (nn.modules.conv._ConvNd, nn.Linear)


def available() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def _output_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Modules whose output tensor is the model's output."""
    seen: dict[int, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: seen.__setitem__(id(o), m))
             for m in model.modules() if m is not model and not list(m.children())]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [seen[id(o)] for o in outs if id(o) in seen]


def prune_channels(model: nn.Module, example: np.ndarray, fraction: float) -> nn.Module:
    """Remove ``fraction`` of the channels of every prunable group, in place."""
    import torch_pruning as tp

    x = torch.tensor(np.asarray(example[:1]))
    with torch.no_grad():
        before = model(x).shape
    n_before = sum(p.numel() for p in model.parameters())
    ignored = _output_layers(model, x)
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    recurrent = [(n, m) for n, m in model.named_modules() if isinstance(m, RECURRENT)]
    for name, m in recurrent:
        why = rnn_channels.unsupported(m)
        if why:
            raise UnsupportedOpError(type(m).__name__, name, "prune-channels", why)
    hidden = [m.hidden_size for _, m in recurrent]
    rnn = rnn_channels.make_pruner()
    try:
        pruner = tp.pruner.MetaPruner(
            model, x, importance=rnn_channels.make_importance(p=1) if recurrent
            else tp.importance.MagnitudeImportance(p=1), pruning_ratio=fraction,
            ignored_layers=ignored, num_heads=heads,
            customized_pruners={t: rnn for t in RECURRENT} if recurrent else None,
            root_module_types=ROOTS + RECURRENT if recurrent else ROOTS)
        pruner.step()
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedOpError("torch-pruning", type(model).__name__, "prune-channels",
                                 f"the dependency graph cannot prune this model: {text}") from None
    with torch.no_grad():
        after = model(x).shape
    if after != before:
        raise ModelError(f"prune-channels: the output shape changed from {tuple(before)} to "
                         f"{tuple(after)}; the layer producing the output was not found")
    n_after = sum(p.numel() for p in model.parameters())
    kept = [(n, m) for (n, m), h in zip(recurrent, hidden) if m.hidden_size == h]
    if kept and n_after == n_before:
        name, m = kept[0]
        raise UnsupportedOpError(type(m).__name__, name, "prune-channels",
                                 "its hidden units cannot be pruned: the dependency graph "
                                 "follows only the layer's output sequence to the layers that "
                                 "read it (not its final state h_n, nor a flatten over time)")
    if n_after == n_before:
        raise UnsupportedOpError("prune-channels", type(model).__name__, "prune-channels",
                                 "no layer can lose channels (only the output layers have "
                                 "channels to remove, and they keep them)")
    log.info("prune-channels (torch-pruning): %d -> %d parameters", n_before, n_after)
    return model
