"""Quantize both operands of activation x activation matmuls (attention's Q K^T and P V).

edgec's quantizer swaps the class of each Conv2d / Linear in place; a matmul of two activations
is a function call inside some module's forward (``q @ k.transpose(-2, -1)``, ``torch.matmul``,
``torch.bmm``; ``F.scaled_dot_product_attention`` counts as its two matmuls, run in their
math form as torchao's path does), with no module to swap. So:

- ``find_sites`` runs the model once under a ``TorchFunctionMode`` that sees every matmul, while
  module hooks say whose forward is running: the innermost module is the call's *owner*. A call
  counts when both operands are floating-point activations (neither a parameter nor a buffer of
  the model: ``x @ W`` with a weight stays a float op);
- ``quantize_sites`` gives each owner ``edgec_matmul_quant``, a ModuleList with two
  ``ActQuant`` per call (in call order, calibrated like every other activation quantizer), and
  hooks that hold a ``TorchFunctionMode`` open during its forward: the n-th activation matmul
  of a forward gets its operands fake-quantized by the n-th pair.

The fake quantizers stay in the copy the exporter traces (like the residual-add quantizers), and
torch's ONNX symbolic for ``fake_quantize_per_tensor_affine`` writes them as QuantizeLinear ->
DequantizeLinear, so the MatMul reads a DequantizeLinear on both inputs, which the CPU
integer lowering computes as an int32 matmul.

Why a TorchFunctionMode and not torch.fx: the model keeps its class and module tree (pruning
masks, QAT, names in the metadata), and models that fx cannot trace are covered too. A model
whose forward changes the number of activation matmuls from call to call (data-dependent
control flow) is refused at the first forward that does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from toolchain.compress.pt2e_quantizer import _math_sdpa
from toolchain.errors import ModelError

log = logging.getLogger(__name__)

ATTR = "edgec_matmul_quant"
_MODE = "_edgec_matmul_mode"
_MATMULS = frozenset({torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
                      torch.bmm, torch.Tensor.bmm})


@dataclass(frozen=True)
class Site:
    """One activation x activation matmul: the owner module's name and its call index."""

    owner: str
    index: int


def _operands(func, args, kwargs):
    if func not in _MATMULS or kwargs.get("out") is not None or len(args) < 2:
        return None
    a, b = args[0], args[1]
    return (a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else None


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
              "enable_gqa")


def _math_form(func, args, kwargs):
    """F.scaled_dot_product_attention written as softmax(q k^T * scale + mask) v (the form
    torchao's path exports, ``pt2e_quantizer``), or None for another call or where torch's op
    stays (dropout, grouped query attention)."""
    if func is not F.scaled_dot_product_attention:
        return None
    given = dict(zip(_SDPA_ARGS, args)) | kwargs
    if given.get("dropout_p") or given.get("enable_gqa"):
        return None
    return _math_sdpa(func)


def _is_activation(t: torch.Tensor, constants: set[int]) -> bool:
    return t.is_floating_point() and t.ndim >= 2 and not isinstance(t, nn.Parameter) \
        and id(t) not in constants


class _Record(TorchFunctionMode):
    """Discovery: counts each activation matmul against the innermost running module."""

    def __init__(self, stack: list[list], constants: set[int]):
        super().__init__()
        self.stack, self.constants = stack, constants  # stack: [module name, calls so far]
        self.sites: list[Site] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        math = _math_form(func, args, kwargs)
        if math is not None:
            with self:  # its two matmuls are seen here
                return math(*args, **kwargs)
        ops = _operands(func, args, kwargs)
        if ops is not None and self.stack and all(_is_activation(t, self.constants) for t in ops):
            frame = self.stack[-1]
            self.sites.append(Site(frame[0], frame[1]))
            frame[1] += 1
        return func(*args, **kwargs)


def find_sites(model: nn.Module, x: torch.Tensor) -> list[Site]:
    """The activation x activation matmuls one forward of ``model`` on ``x`` calls (a module
    called twice in that forward lists its calls once: both calls share the quantizers)."""
    names = {id(m): n for n, m in model.named_modules()}
    constants = {id(t) for t in model.buffers()} | {id(p) for p in model.parameters()}
    stack: list[list] = []

    def enter(module, inputs):
        stack.append([names.get(id(module), "?"), 0])

    def leave(module, inputs, output):
        stack.pop()

    hooks = []
    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(enter))
        hooks.append(m.register_forward_hook(leave, always_call=True))
    mode = _Record(stack, constants)
    try:
        with torch.no_grad(), mode:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return sorted({s for s in mode.sites if s.owner != "?"}, key=lambda s: (s.owner, s.index))


class _Quantize(TorchFunctionMode):
    """During one forward of ``owner``: fake-quantize the operands of its activation matmuls."""

    def __init__(self, owner: nn.Module):
        super().__init__()
        self.owner = owner
        self.quants = getattr(owner, ATTR)
        self.constants = {id(p) for p in owner.parameters()} | {id(b) for b in owner.buffers()}
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        math = _math_form(func, args, kwargs)
        if math is not None:
            with self:
                return math(*args, **kwargs)
        ops = _operands(func, args, kwargs)
        if ops is None or not all(_is_activation(t, self.constants) for t in ops):
            return func(*args, **kwargs)
        i = self.calls
        if 2 * i + 1 >= len(self.quants):
            raise ModelError(f"quantize: {type(self.owner).__name__}'s forward calls more "
                             f"activation x activation matmuls ({i + 1}) than when it was "
                             f"calibrated ({len(self.quants) // 2}); its control flow depends "
                             "on the data")
        self.calls += 1
        a = self.quants[2 * i](ops[0])
        b = self.quants[2 * i + 1](ops[1])
        # the outer owners' modes must not see this call again (it is this owner's)
        with torch._C.DisableTorchFunction():
            return func(a, b, *args[2:], **kwargs)


def _open(module: nn.Module, inputs) -> None:
    mode = _Quantize(module)
    mode.__enter__()
    module.__dict__[_MODE] = mode


def _close(module: nn.Module, inputs, output) -> None:
    mode = module.__dict__.pop(_MODE, None)
    if mode is not None:
        mode.__exit__(None, None, None)


def quantize_sites(model: nn.Module, sites: list[Site], make_quant) -> int:
    """Give each owner of ``sites`` its operand quantizers (``make_quant()`` -> ActQuant) and
    the hooks that apply them. Returns the number of matmuls quantized."""
    per_owner: dict[str, int] = {}
    for s in sites:
        per_owner[s.owner] = max(per_owner.get(s.owner, 0), s.index + 1)
    for name, count in per_owner.items():
        owner = model.get_submodule(name)
        setattr(owner, ATTR, nn.ModuleList(make_quant() for _ in range(2 * count)))
        owner.register_forward_pre_hook(_open)
        owner.register_forward_hook(_close, always_call=True)
    if per_owner:
        log.info("quantize: %d activation x activation matmul(s) in %s get quantized operands",
                 sum(per_owner.values()), ", ".join(n or "the model" for n in per_owner))
    return sum(per_owner.values())
