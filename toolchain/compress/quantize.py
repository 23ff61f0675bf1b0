"""Quantize: fake-quantize Conv2d / Linear weights and activations (post-training, then QAT).

Before: a float model (any earlier step). After: the same module tree in which every Conv2d and
Linear also fake-quantizes its weight (per output channel, symmetric) and its input activation
(per tensor), and the model's output is fake-quantized too, as are both operands of residual
adds and (int8/int4) of activation x activation matmuls such as attention's Q K^T and P V
(``act_matmul.py``); batchnorm that directly follows a
conv in an ``nn.Sequential`` is folded into the conv first, so the quantized weight is the one
that is deployed.

Modes (``Quantize(mode=...)``):

- ``int8``: weights int8 in [-127, 127], one float scale per output channel; activations uint8
  with a float scale and zero point per tensor, ranges from calibration.
- ``int4``: the same with weights in [-7, 7] (stored in int8 containers in ONNX).
- ``fixed<W,I>``: power-of-two scales for FPGAs (ap_fixed<W,I>, see FACTS.md: float scales
  overflow hls4ml's fixed types). Activations are signed fixed<W,I> (frac bits W-I, range
  [-2^(I-1), 2^(I-1) - 2^(I-W)]); weights are W-bit with one power-of-two scale per layer,
  the largest that keeps the layer's largest weight in range (``weight_frac_bits`` per layer).
  W <= 8 (ONNX int8 QuantizeLinear); narrower types add a Clip before QuantizeLinear.

Calibration (activation ranges): ``minmax`` and ``histogram`` use torch.ao.quantization's
MinMaxObserver and HistogramObserver (the latter minimizes the L2 quantization error, like an
entropy calibrator); ``percentile`` clips at the given percentile of the observed values.
The fake quantization itself is torch's ``fake_quantize_per_channel_affine`` /
``fake_quantize_per_tensor_affine`` (round half to even like onnxruntime's QuantizeLinear;
straight-through gradients, which is what QAT fine-tuning needs).

Why not onnxruntime.quantization.quantize_static: the PyTorch model must stay the one source of
truth, since QAT fine-tunes it and the export checks onnxruntime against it; the QDQ graph is
written from these quantizers by ``toolchain.compress.export``.
"""

from __future__ import annotations

import logging
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from toolchain.compress.act_matmul import find_sites, quantize_sites
from toolchain.errors import ConfigError, UnsupportedOpError
from toolchain.models.train import Recipe

log = logging.getLogger(__name__)

CALIBRATIONS = ("minmax", "percentile", "histogram")
QUANTIZERS = ("auto", "edgec", "torchao")
# layers edgec's quantizer refuses that torchao's PT2E quantizer takes (--quantizer auto; a
# model with _KEPT layers goes there too, for int8/int4, since torchao quantizes them);
# for a recurrent layer torchao quantizes the model's Linear/Conv layers and leaves the
# LSTM/GRU itself float (its ONNX node compiles through UnrollRecurrent).
TORCHAO_TAKES = ("Conv1d", "ConvTranspose1d", "ConvTranspose2d", "Conv3d", "LSTM", "GRU", "RNN")
# Layers with weights that no step knows how to quantize; norms stay float on purpose.
_FLOAT_OK = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
# Layers every step leaves as they are (float, dense): embedding tables, and attention's packed
# in_proj (its out_proj is a Linear that pruning reaches; quantize and lowrank skip it, since
# nn.MultiheadAttention reads the weight directly instead of calling the Linear).
_KEPT = (nn.Embedding, nn.MultiheadAttention)


@dataclass(frozen=True)
class QuantSpec:
    """Bit widths and scale kind of one quantization mode."""

    mode: str  # "int8" | "int4" | "fixed"
    weight_bits: int
    act_bits: int
    pow2: bool
    fixed: tuple[int, int] | None = None  # (W, I) for fixed<W,I>

    @property
    def act_signed(self) -> bool:
        return self.pow2


def parse_mode(text: str) -> QuantSpec:
    """``int8`` | ``int4`` | ``fixed<W,I>`` (e.g. ``fixed<8,3>``) -> QuantSpec, or ConfigError."""
    t = str(text).strip().lower().replace(" ", "")
    if t == "int8":
        return QuantSpec("int8", 8, 8, False)
    if t == "int4":
        return QuantSpec("int4", 4, 8, False)
    m = re.fullmatch(r"fixed<(\d+),(-?\d+)>", t)
    if m:
        w, i = int(m.group(1)), int(m.group(2))
        if not 2 <= w <= 8:
            raise ConfigError(f"quantize {text}: W must be 2..8 (ONNX int8 QuantizeLinear); "
                              "wider fixed-point types are not supported yet")
        if not 1 <= i <= w:
            raise ConfigError(f"quantize {text}: I (integer bits incl. sign) must be 1..W")
        return QuantSpec("fixed", w, w, True, (w, i))
    raise ConfigError(f"unknown quantization mode '{text}'; use int8, int4 or fixed<W,I> "
                      "(e.g. fixed<8,3>)")


class ActQuant(nn.Module):
    """Per-tensor activation fake-quantizer: observes during calibration, then quantizes."""

    def __init__(self, bits: int, signed: bool, calibration: str = "minmax",
                 percentile: float = 99.99, frac_bits: int | None = None):
        super().__init__()
        self.bits, self.signed = bits, signed
        self.calibration, self.percentile = calibration, percentile
        self.frac_bits = frac_bits
        self.qmin = -(2 ** (bits - 1)) if signed else 0
        self.qmax = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
        self.register_buffer("scale", torch.tensor(1.0 if frac_bits is None else 2.0 ** -frac_bits))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.observing = False
        self.enabled = frac_bits is not None  # fixed-point scales need no calibration
        self._observer = None
        self._samples: list[np.ndarray] = []

    def start_observing(self) -> None:
        if self.frac_bits is not None:
            return
        from torch.ao.quantization import HistogramObserver, MinMaxObserver

        kind = {"minmax": MinMaxObserver, "histogram": HistogramObserver}.get(self.calibration)
        self._observer = kind(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                              quant_min=self.qmin, quant_max=self.qmax) if kind else None
        self._samples = []
        self.observing, self.enabled = True, False

    def freeze(self) -> None:
        """End calibration: compute scale and zero point from what was observed."""
        if not self.observing:
            return
        if self._observer is not None:
            scale, zp = self._observer.calculate_qparams()
            scale, zp = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
        else:
            values = np.concatenate(self._samples) if self._samples else np.zeros(1, np.float32)
            lo = min(float(np.percentile(values, 100.0 - self.percentile)), 0.0)
            hi = max(float(np.percentile(values, self.percentile)), 0.0)
            scale = max((hi - lo) / (self.qmax - self.qmin), 1e-8)
            zp = int(np.clip(round(self.qmin - lo / scale), self.qmin, self.qmax))
        self.scale.fill_(scale)
        self.zero_point.fill_(zp)
        self._observer, self._samples = None, []
        self.observing, self.enabled = False, True

    def forward(self, x):
        if self.observing:
            if self._observer is not None:
                self._observer(x.detach())
            else:
                flat = x.detach().reshape(-1).numpy()
                if flat.size > 200_000:  # a fixed stride keeps the sample deterministic
                    flat = flat[:: flat.size // 200_000 + 1]
                self._samples.append(flat.astype(np.float32))
            return x
        if not self.enabled:
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point,
                                                     self.qmin, self.qmax)

    def describe(self) -> dict:
        return {"act_bits": self.bits, "act_signed": self.signed,
                "act_scale": float(self.scale), "act_zero_point": int(self.zero_point),
                "act_frac_bits": self.frac_bits}


def weight_qparams(w: torch.Tensor, bits: int, pow2: bool) -> tuple[torch.Tensor, int, int]:
    """Per-output-channel symmetric scales for ``w`` (axis 0), and the integer range."""
    w = w.detach()
    if pow2:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        amax = float(w.abs().max())
        frac = math.floor(math.log2(qmax / amax)) if amax > 0 else 0
        return torch.full((w.shape[0],), 2.0 ** -frac), qmin, qmax
    qmax = 2 ** (bits - 1) - 1
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return scale, -qmax, qmax


def fake_quant_weight(w: torch.Tensor, bits: int, pow2: bool) -> torch.Tensor:
    scale, qmin, qmax = weight_qparams(w, bits, pow2)
    zp = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)


class QuantLayer:
    """Mixin for a Conv2d / Linear whose class was swapped in place (so names, parameters,
    masks and hooks stay): fake-quantizes the input and the weight in forward."""

    weight_bits: int
    weight_pow2: bool
    act_quant: ActQuant

    def quantized_weight(self) -> torch.Tensor:
        return fake_quant_weight(self.weight, self.weight_bits, self.weight_pow2)

    def weight_frac_bits(self) -> int | None:
        if not self.weight_pow2:
            return None
        scale, _, _ = weight_qparams(self.weight, self.weight_bits, True)
        return int(round(-math.log2(float(scale[0]))))


class QConv2d(QuantLayer, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(self.act_quant(x), self.quantized_weight(), self.bias)


class QLinear(QuantLayer, nn.Linear):
    def forward(self, x):
        return nn.functional.linear(self.act_quant(x), self.quantized_weight(), self.bias)


_QCLASS = {nn.Conv2d: QConv2d, nn.Linear: QLinear}
FLOAT_CLASS = {QConv2d: nn.Conv2d, QLinear: nn.Linear}


@contextmanager
def no_fastpath():
    """nn.TransformerEncoderLayer's eval fast path reads its Linear weights directly (a fused
    kernel), which would skip the fake quantizers: the slow path calls the layers."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLayer) for m in model.modules())


def output_quant(model: nn.Module) -> ActQuant | None:
    return getattr(model, "edgec_output_quant", None)


def _quantize_output(module: nn.Module, inputs, output):
    return module.edgec_output_quant(output)


def _quantize_residual(module: nn.Module, inputs, output):
    return module.edgec_residual_quant(output)


def residual_producers(model: nn.Module) -> list[str]:
    """The modules whose outputs a tensor + tensor add reads (a residual connection), found
    by tracing ``model`` with torch.fx (none if it does not trace)."""
    import operator

    from torch import fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001  (data-dependent control flow: adds stay float)
        log.debug("quantize: no residual adds found (%s)", str(exc).splitlines()[0])
        return []
    names: list[str] = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in (operator.add, torch.add) and \
                len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2]):
            names += [a.target for a in node.args[:2]
                      if a.op == "call_module" and a.target not in names]
    return names


def dequantize_in_place(model: nn.Module) -> None:
    """Turn every quantized layer back into a plain one holding its fake-quantized weight,
    and drop the output quantizer (used on the copy that the ONNX exporter traces)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QuantLayer):
                m.weight.copy_(m.quantized_weight())
                del m.act_quant
                m.__class__ = FLOAT_CLASS[type(m)]
    for key, hook in list(model._forward_hooks.items()):
        if hook is _quantize_output:
            del model._forward_hooks[key]
    if hasattr(model, "edgec_output_quant"):
        del model.edgec_output_quant


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module, str]]:
    """(conv, batchnorm, batchnorm's qualified name) where the batchnorm reads only the conv."""
    try:
        from torch import fx

        gm = fx.symbolic_trace(model)
    except Exception:  # untraceable model: look at consecutive children of Sequentials
        pairs = []
        for prefix, seq in model.named_modules():
            if not isinstance(seq, nn.Sequential):
                continue
            items = list(seq.named_children())
            for (_, prev), (bn_name, bn) in zip(items[:-1], items[1:]):
                while isinstance(prev, nn.Sequential) and len(prev):
                    prev = prev[-1]  # a low-rank factorized conv ends in its second conv
                pairs.append((prev, bn, f"{prefix}.{bn_name}" if prefix else bn_name))
        return pairs
    mods = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        src = node.args[0]
        if isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1:
            pairs.append((mods[src.target], mods[node.target], node.target))
    return pairs


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each BatchNorm2d whose only input is a Conv2d's output into that conv (eval
    statistics); the batchnorm becomes Identity. Returns how many were folded.

    Needed because torch's ONNX exporter folds them itself, which would change the weights
    that the quantizers and the metadata refer to."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    folded = 0
    for conv, bn, bn_name in _conv_bn_pairs(model):
        if type(conv) not in (nn.Conv2d, QConv2d) or not isinstance(bn, nn.BatchNorm2d) \
                or not bn.track_running_stats:
            continue
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                    bn.eps, bn.weight, bn.bias)
        with torch.no_grad():
            conv.weight.copy_(w)
            if conv.bias is None:
                conv.bias = nn.Parameter(b.detach().clone())
            else:
                conv.bias.copy_(b)
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Identity())
        folded += 1
    return folded


def check_supported(model: nn.Module, step: str, also: tuple = ()) -> None:
    """UnsupportedOpError for a layer with weights that ``step`` cannot handle (``also``:
    further layer types this step takes)."""
    from toolchain.compress.program import ExportedProgramModule

    if isinstance(model, ExportedProgramModule):
        raise UnsupportedOpError("ExportedProgram", "model", step,
                                 "a .pt2 program is a graph of aten ops with no nn.Linear / "
                                 "nn.Conv2d layers to compress; give the model as "
                                 "file.py:ClassName with --weights, or as a pickled .pt")
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear) + _FLOAT_OK + _KEPT + tuple(also)) \
                or not list(m.parameters(False)):
            if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros"):
                raise UnsupportedOpError(type(m).__name__, name, step,
                                         f"padding_mode={m.padding_mode!r}")
            continue
        if type(m).__module__.startswith("torch.nn"):
            raise UnsupportedOpError(type(m).__name__, name, step,
                                     "only Conv2d and Linear layers can be compressed")


@dataclass(frozen=True)
class Quantize:
    """Post-training quantization with calibration, then optional QAT fine-tuning."""

    name: ClassVar[str] = "quantize"
    mode: str = "int8"
    calibration: str = "minmax"
    percentile: float = 99.99
    calibration_samples: int = 512
    qat_epochs: int = 0
    quantizer: str = "auto"  # edgec | torchao | auto (torchao for layers edgec's refuses)

    def __post_init__(self):
        parse_mode(self.mode)
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"unknown quantizer '{self.quantizer}'; use "
                              f"{', '.join(QUANTIZERS)}")
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"unknown calibration '{self.calibration}'; "
                              f"use one of {', '.join(CALIBRATIONS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"calibration percentile {self.percentile} must be in (50, 100]")
        if self.qat_epochs < 0 or self.calibration_samples < 1:
            raise ConfigError("qat_epochs must be >= 0 and calibration_samples >= 1")

    def to_json(self) -> dict:
        out = {"step": self.name, "mode": self.mode, "calibration": self.calibration,
               "percentile": self.percentile, "qat_epochs": self.qat_epochs}
        if self.quantizer != "auto":
            out["quantizer"] = self.quantizer
        return out

    def _torchao(self, model: nn.Module, ctx, spec: QuantSpec) -> nn.Module:
        from toolchain.compress.pt2e import quantize_pt2e

        try:
            import torchao  # noqa: F401
        except ImportError:
            raise ConfigError("quantize: this model needs torchao's PT2E quantizer, which is not "
                              "installed: pip install torchao==0.18.0") from None

        from toolchain.compress.pt2e_quantizer import QuantizerConfig

        if spec.mode not in ("int8", "int4"):
            raise UnsupportedOpError(type(model).__name__, "model", self.name,
                                     f"the torchao path does int8 and int4 weights (uint8 "
                                     f"activations), not {self.mode}")
        model.eval()
        log.info("quantize: folded %d batchnorm layer(s)", fold_batchnorm(model))
        config = QuantizerConfig(weight_bits=spec.weight_bits)
        if self.qat_epochs:  # pt2e_qat.py: prepare_qat_pt2e, fine-tune, convert
            from toolchain.compress.pt2e_qat import qat_pt2e

            return qat_pt2e(model, ctx, self.qat_epochs, ctx.finetune_lr * 0.3,
                            self.calibration_samples, config)
        return quantize_pt2e(model, ctx.X_train, self.calibration_samples, config)

    def labels_needed(self, ctx) -> None:
        from toolchain.compress.finetune import labels_needed

        if self.qat_epochs:
            labels_needed(ctx, self.name, f"quantization-aware training ({self.qat_epochs} "
                                          "epochs)")

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        spec = parse_mode(self.mode)
        if is_quantized(model) or getattr(model, "weight_bits", None):
            raise ConfigError("quantize: the model is already quantized (one quantize step only)")
        if self.quantizer == "torchao":
            return self._torchao(model, ctx, spec)
        try:
            check_supported(model, self.name)
        except UnsupportedOpError as exc:
            if self.quantizer == "auto" and exc.op_type in TORCHAO_TAKES:
                log.info("quantize: %s; quantizing with torchao's PT2E flow instead", exc)
                return self._torchao(model, ctx, spec)
            raise
        if self.quantizer == "auto" and not spec.pow2 and \
                any(isinstance(m, _KEPT) for m in model.modules()):
            log.info("quantize: attention / embedding layers, which edgec's quantizer leaves "
                     "float; quantizing with torchao's PT2E flow instead")
            return self._torchao(model, ctx, spec)
        model.eval()
        log.info("quantize: folded %d batchnorm layer(s)", fold_batchnorm(model))
        frac = spec.fixed[0] - spec.fixed[1] if spec.fixed else None
        layers = [m for m in model.modules() if type(m) in _QCLASS]
        if not layers:
            raise UnsupportedOpError("none", type(model).__name__, self.name,
                                     "the model has no Conv2d or Linear layer to quantize")
        # traced before the layers change class
        residual = [] if spec.pow2 else residual_producers(model)
        sample = torch.tensor(np.asarray(ctx.X_train[:2]))
        matmuls = [] if spec.pow2 else find_sites(model, sample)
        for m in layers:
            m.__class__ = _QCLASS[type(m)]
            m.weight_bits, m.weight_pow2 = spec.weight_bits, spec.pow2
            m.act_quant = ActQuant(spec.act_bits, spec.act_signed, self.calibration,
                                   self.percentile, frac)
        # Both operands of a residual add quantized too (the export traces them as QDQ): the
        # add then runs on int8 and no float activation is left between blocks.
        for name in residual:
            producer = model.get_submodule(name)
            producer.edgec_residual_quant = ActQuant(spec.act_bits, spec.act_signed,
                                                     self.calibration, self.percentile)
            producer.register_forward_hook(_quantize_residual)
        # Both operands of an activation x activation matmul (attention) too: act_matmul.py
        quantize_sites(model, matmuls, lambda: ActQuant(spec.act_bits, spec.act_signed,
                                                        self.calibration, self.percentile))
        model.edgec_output_quant = ActQuant(spec.act_bits, spec.act_signed, self.calibration,
                                            self.percentile, frac)
        model.register_forward_hook(_quantize_output)
        quantizers = [q for q in model.modules() if isinstance(q, ActQuant)]
        for q in quantizers:
            q.start_observing()
        with torch.no_grad():
            torch.set_num_threads(1)
            X = torch.tensor(np.asarray(ctx.X_train[: self.calibration_samples]))
            for i in range(0, len(X), 128):
                model(X[i:i + 128])
        for q in quantizers:
            q.freeze()
        if self.qat_epochs:
            from toolchain.compress.finetune import finetune

            finetune(model, ctx,
                     Recipe(epochs=self.qat_epochs, lr=ctx.finetune_lr * 0.3, batch=ctx.batch,
                            seed=ctx.seed))
        return model.eval()
