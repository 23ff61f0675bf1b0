"""Hidden-unit pruning of nn.LSTM / nn.GRU / nn.RNN, as a torch-pruning customized pruner.

torch-pruning 1.6.1 ships an ``LSTMPruner``, but it cannot be used: it asserts
``num_layers == 1``, and it slices the wrong axes (``weight_hh_l0`` only along its rows with the
unexpanded indices, ``weight_ih_l0``'s *input* columns with the gate-expanded indices, and
``bias_ih_l0`` with the unexpanded ones), so the pruned module no longer runs. It has nothing
for GRU or RNN. This module replaces it for those three layer types.

Hidden unit ``j`` of a layer is rows ``j, H+j, ...`` (one per gate: 4 for LSTM, 3 for GRU, 1 for
RNN; each gate is computed per unit) of ``weight_ih``, ``weight_hh``, ``bias_ih`` and
``bias_hh``, and column ``j`` of ``weight_hh`` and of the next layer's ``weight_ih``. The
module's out channels are the last layer's units (the dependency graph couples them with the
layers that read the output); its in channels are the first layer's input columns. torch keeps
one ``hidden_size`` for every layer of a stack, so the inner layers lose as many units as the
last one, chosen by the L1 norm of each unit's weights (they reach nothing outside the module).
Unidirectional layers without ``proj_size`` only; others are refused by ``check``.
"""

from __future__ import annotations

import torch
from torch import nn

RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def gates(layer: nn.Module) -> int:
    return next(g for t, g in _GATES.items() if isinstance(layer, t))


def unsupported(layer: nn.Module) -> str | None:
    """Why this recurrent layer's hidden units cannot be pruned, or None."""
    if layer.bidirectional:
        return "bidirectional recurrent layers are not pruned (only one direction's units)"
    if getattr(layer, "proj_size", 0):
        return "an LSTM with proj_size is not pruned"
    return None


def _rows(layer: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    h = layer.hidden_size
    return torch.cat([keep + g * h for g in range(gates(layer))])


def _set(layer: nn.Module, name: str, idx: torch.Tensor, dim: int) -> None:
    p = getattr(layer, name)
    setattr(layer, name, nn.Parameter(p.detach().index_select(dim, idx).clone(),
                                      requires_grad=p.requires_grad))


def unit_scores(layer: nn.Module, l: int) -> torch.Tensor:
    """L1 norm of each hidden unit's weights in layer ``l`` (its rows, gates summed)."""
    h, g = layer.hidden_size, gates(layer)
    w = (getattr(layer, f"weight_ih_l{l}").detach().abs().sum(1)
         + getattr(layer, f"weight_hh_l{l}").detach().abs().sum(1))
    return w.reshape(g, h).sum(0)


def shrink_units(layer: nn.Module, keep_per_layer: list[torch.Tensor]) -> None:
    """Keep the (sorted) units ``keep_per_layer[l]`` of every layer ``l``, in place."""
    for l, keep in enumerate(keep_per_layer):
        rows = _rows(layer, keep)
        _set(layer, f"weight_ih_l{l}", rows, 0)
        _set(layer, f"weight_hh_l{l}", rows, 0)
        _set(layer, f"weight_hh_l{l}", keep, 1)
        if layer.bias:
            _set(layer, f"bias_ih_l{l}", rows, 0)
            _set(layer, f"bias_hh_l{l}", rows, 0)
        if l + 1 < layer.num_layers:
            _set(layer, f"weight_ih_l{l + 1}", keep, 1)
    layer.hidden_size = len(keep_per_layer[0])
    layer._init_flat_weights()  # torch's forward reads a cached list of the parameters


def make_pruner():
    """A ``torch_pruning`` pruning function for the recurrent layer types."""
    import torch_pruning as tp

    class RecurrentPruner(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = RECURRENT

        def prune_out_channels(self, layer, idxs):
            h, n = layer.hidden_size, layer.num_layers
            drop = set(int(i) for i in idxs)
            last = torch.tensor(sorted(set(range(h)) - drop))
            keeps = []
            for l in range(n - 1):  # inner layers: as many units, by their own L1 norm
                top = torch.topk(unit_scores(layer, l), len(last)).indices
                keeps.append(torch.sort(top).values)
            shrink_units(layer, keeps + [last])
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = torch.tensor(sorted(set(range(layer.input_size)) - set(int(i) for i in idxs)))
            _set(layer, "weight_ih_l0", keep, 1)
            layer.input_size = len(keep)
            layer._init_flat_weights()  # refresh the cached parameter list
            return layer

        def get_out_channels(self, layer):
            return layer.hidden_size

        def get_in_channels(self, layer):
            return layer.input_size

    return RecurrentPruner()


def make_importance(p: int = 1):
    """torch-pruning's ``MagnitudeImportance(p)`` (which skips layers it does not know), plus
    the L1 norm of a recurrent layer's last-layer units when the group prunes its outputs."""
    import torch_pruning as tp

    class Importance(tp.importance.MagnitudeImportance):
        def __call__(self, group):
            imp = super().__call__(group)
            parts = []
            for i, (dep, idxs) in enumerate(group):
                fn = getattr(dep.pruning_fn, "__name__", "")
                if isinstance(dep.layer, RECURRENT) and fn == "prune_out_channels":
                    s = unit_scores(dep.layer, dep.layer.num_layers - 1)[list(idxs)]
                    parts.append((torch.as_tensor(list(group[i].root_idxs)),
                                  s / s.mean().clamp_min(1e-12)))
            extra = None
            if parts:
                n = len(imp) if imp is not None else max(int(r.max()) for r, _ in parts) + 1
                extra = torch.zeros(n)
                for root, s in parts:
                    extra.scatter_add_(0, root, s.float())
            if extra is None:
                return imp
            return extra if imp is None else imp + extra.to(imp.dtype)

    return Importance(p=p)
