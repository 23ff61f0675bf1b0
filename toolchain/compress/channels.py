"""PruneChannels: structured pruning that removes whole output channels / neurons, then fine-tunes.

Before: a float model that torch.fx can trace. After: a smaller dense model: in each prunable
group a fraction ``fraction`` of the producer's output channels is gone, together with the
matching batchnorm entries, depthwise-conv channels and the consumer's input channels (a
Linear after ``flatten`` loses each channel's whole spatial block).

A group starts at a Conv2d (groups=1) or Linear (the producer) and follows its output through
ops that keep channels separate (batchnorm, activations, pooling, dropout, depthwise convs,
flatten) to the next Conv2d / Linear (the consumer). A producer whose output reaches anything
else (an add, a concat, a reshape, the model output) is left alone: its channel count is fixed
by that op. When that happens (or fx cannot trace the model), ``engine="auto"`` hands the
model to torch-pruning's dependency graph instead (``tp_channels.py``), which prunes through
residual adds, concats, depthwise groups, attention and recurrent layers' hidden units
(LSTM / GRU / RNN always go there). Channels are ranked by the L1 norm of the producer's weights times the |scale| of
the batchnorm that follows, if any.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from toolchain.compress import tp_channels
from toolchain.compress.rnn_channels import RECURRENT
from toolchain.compress.quantize import check_supported, is_quantized
from toolchain.errors import ConfigError, UnsupportedOpError
from toolchain.compress.finetune import finetune, labels_needed
from toolchain.models.train import MASK, Recipe

log = logging.getLogger(__name__)

ENGINES = ("auto", "fx", "torch-pruning")
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU,
                 nn.Hardswish, nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool2d)
_PASS_FUNCS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh,
               F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d}
_PASS_METHODS = {"relu", "sigmoid", "tanh"}


@dataclass
class ChannelGroup:
    """One producer and every layer whose shape follows its output channels."""

    producer: str
    channels: int
    batchnorms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (name, elements/channel)


class _Stop(Exception):
    pass


def _is_producer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _flatten_mult(node: fx.Node, src: fx.Node) -> int | None:
    """Elements per channel if ``node`` flattens ``src`` from dim 1, else None."""
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    elif node.op == "call_method" and node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    else:
        return None
    shape = src.meta["tensor_meta"].shape
    if start != 1 or len(shape) < 2:
        return None
    return int(np.prod(shape[2:])) if len(shape) > 2 else 1


def _walk(node: fx.Node, group: ChannelGroup, modules: dict, conv_layout: bool, mult: int,
          flat: bool) -> None:
    for user in node.users:
        what = f"'{user.name}' ({user.target if user.op != 'output' else 'model output'})"
        if user.op == "call_module":
            m = modules[user.target]
            if isinstance(m, _PASS_MODULES) and not flat:
                _walk(user, group, modules, conv_layout, mult, flat)
            elif isinstance(m, nn.Flatten) and m.start_dim == 1 and conv_layout and not flat:
                shape = node.meta["tensor_meta"].shape
                _walk(user, group, modules, conv_layout, int(np.prod(shape[2:])), True)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and not flat:
                group.batchnorms.append(user.target)
                _walk(user, group, modules, conv_layout, mult, flat)
            elif _is_depthwise(m) and conv_layout and not flat:
                group.depthwise.append(user.target)
                _walk(user, group, modules, conv_layout, mult, flat)
            elif isinstance(m, nn.Conv2d) and m.groups == 1 and conv_layout and not flat:
                group.consumers.append((user.target, 1))
            elif isinstance(m, nn.Linear) and (flat or not conv_layout):
                group.consumers.append((user.target, mult))
            else:
                raise _Stop(f"{type(m).__name__} {what}")
        elif user.op == "call_function" and user.target in _PASS_FUNCS and user.args[0] is node:
            _walk(user, group, modules, conv_layout, mult, flat)
        elif user.op == "call_method" and user.target in _PASS_METHODS:
            _walk(user, group, modules, conv_layout, mult, flat)
        elif conv_layout and not flat and (k := _flatten_mult(user, node)) is not None:
            _walk(user, group, modules, conv_layout, k, True)
        else:
            name = getattr(user.target, "__name__", str(user.target))
            raise _Stop(f"{name} {what}" if user.op != "output" else what)


def find_groups(model: nn.Module, example: np.ndarray) -> tuple[list[ChannelGroup], list[str]]:
    """Prunable groups, and one line per producer that cannot be pruned (and why)."""
    try:
        gm = fx.symbolic_trace(model)
        ShapeProp(gm).propagate(torch.tensor(np.asarray(example[:1])))
    except Exception as exc:
        raise UnsupportedOpError("fx.symbolic_trace", type(model).__name__, "prune-channels",
                                 f"cannot trace the model: {str(exc).splitlines()[0]}") from None
    modules = dict(gm.named_modules())
    groups, skipped = [], []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not _is_producer(modules[node.target]):
            continue
        m = modules[node.target]
        conv = isinstance(m, nn.Conv2d)
        group = ChannelGroup(node.target, m.out_channels if conv else m.out_features)
        try:
            _walk(node, group, modules, conv, 1, False)
        except _Stop as stop:
            skipped.append(f"{node.target}: output reaches {stop}")
            continue
        if group.consumers:
            groups.append(group)
    return groups, skipped


def _scores(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    w = model.get_submodule(group.producer).weight.detach()
    score = w.abs().reshape(w.shape[0], -1).sum(dim=1)
    if group.batchnorms:
        bn = model.get_submodule(group.batchnorms[0])
        if bn.affine and bn.track_running_stats:
            score = score * (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).abs()
    return score


def _slice(m: nn.Module, name: str, idx: torch.Tensor, dim: int) -> None:
    t = getattr(m, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, idx).clone()
    if isinstance(t, nn.Parameter):
        setattr(m, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        setattr(m, name, new)


def shrink(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Remove every channel of ``group`` not in ``keep`` (sorted indices), in place."""
    p = model.get_submodule(group.producer)
    for attr in ("weight", "bias", MASK):
        _slice(p, attr, keep, 0)
    if isinstance(p, nn.Conv2d):
        p.out_channels = len(keep)
    else:
        p.out_features = len(keep)
    for name in group.batchnorms:
        bn = model.get_submodule(name)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _slice(bn, attr, keep, 0)
        bn.num_features = len(keep)
    for name in group.depthwise:
        dw = model.get_submodule(name)
        for attr in ("weight", "bias", MASK):
            _slice(dw, attr, keep, 0)
        dw.in_channels = dw.out_channels = dw.groups = len(keep)
    for name, mult in group.consumers:
        c = model.get_submodule(name)
        idx = (keep[:, None] * mult + torch.arange(mult)[None, :]).reshape(-1)
        for attr in ("weight", MASK):
            _slice(c, attr, idx, 1)
        if isinstance(c, nn.Conv2d):
            c.in_channels = len(keep)
        else:
            c.in_features = len(idx)


@dataclass(frozen=True)
class PruneChannels:
    name: ClassVar[str] = "prune-channels"
    fraction: float = 0.5
    epochs: int = 15
    # auto: the fx remover below, or torch-pruning (tp_channels.py) when the fx remover has to
    # leave a layer alone (residual add, concat, attention) or cannot trace the model
    engine: str = "auto"

    def __post_init__(self):
        if not isinstance(self.fraction, (int, float)) or not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"prune-channels fraction must be in (0, 1), got {self.fraction}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown prune-channels engine '{self.engine}'; use "
                              f"{', '.join(ENGINES)}")

    def to_json(self) -> dict:
        out = {"step": self.name, "fraction": self.fraction, "epochs": self.epochs}
        if self.engine != "auto":
            out["engine"] = self.engine
        return out

    def labels_needed(self, ctx) -> None:
        if self.epochs:
            labels_needed(ctx, self.name, f"fine-tuning ({self.epochs} epochs)")

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        from toolchain.compress.prune import PRUNABLE

        # the fx remover knows Conv2d and Linear; torch-pruning every conv kind and the hidden
        # units of LSTM / GRU / RNN layers (rnn_channels.py)
        other = [m for m in model.modules() if isinstance(m, PRUNABLE + RECURRENT)
                 and not isinstance(m, (nn.Conv2d, nn.Linear))]
        check_supported(model, self.name, PRUNABLE + RECURRENT if other and self.engine != "fx"
                        and tp_channels.available() else ())
        if is_quantized(model):
            raise ConfigError("prune-channels must come before quantize")
        model.eval()
        masked = any(hasattr(m, MASK) for m in model.modules())
        if other and not masked:
            tp_channels.prune_channels(model, ctx.X_train, self.fraction)
            return self._finetune(model, ctx)
        try:
            groups, skipped = find_groups(model, ctx.X_train)
        except UnsupportedOpError:
            if self.engine == "fx" or masked or not tp_channels.available():
                raise
            groups, skipped = [], ["the model does not trace with torch.fx"]
        # (a layer that produces the model output keeps its outputs either way)
        blocked = [line for line in skipped if not line.endswith("(model output)")]
        if self.engine == "torch-pruning" or (self.engine == "auto" and (blocked or not groups)
                                              and not masked and tp_channels.available()):
            # residual adds, concats, attention: torch-pruning's dependency graph
            tp_channels.prune_channels(model, ctx.X_train, self.fraction)
            return self._finetune(model, ctx)
        if not groups:
            detail = "; ".join(skipped) if skipped else "no Conv2d or Linear layer"
            raise UnsupportedOpError("prune-channels", type(model).__name__, self.name,
                                     f"no layer can lose channels: {detail}")
        for line in skipped:
            log.info("prune-channels: keeping %s", line)
        for g in groups:
            k = max(1, int(round(g.channels * (1.0 - self.fraction))))
            keep = torch.sort(torch.topk(_scores(model, g), k).indices).values
            shrink(model, g, keep)
            log.info("prune-channels: %s %d -> %d", g.producer, g.channels, k)
        return self._finetune(model, ctx)

    def _finetune(self, model: nn.Module, ctx) -> nn.Module:
        if self.epochs:
            finetune(model, ctx,
                     Recipe(epochs=self.epochs, lr=ctx.finetune_lr, batch=ctx.batch, seed=ctx.seed))
        return model.eval()
