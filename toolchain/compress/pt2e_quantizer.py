"""The torchao ``Quantizer`` of edgec's PT2E path, and the attention form it needs.

What it annotates in a ``torch.export`` graph (aten ops, pre-dispatch IR):

- conv1d/2d/3d, conv_transpose1d/2d/3d and linear: input activation uint8 per tensor, weight
  symmetric per output channel (axis 0; axis 1 for transposed convs, whose weights are
  (in, out, k...)). nn.MultiheadAttention's in_proj and out_proj are ``aten.linear`` there.
- matmul / mm / bmm (and baddbmm's two products): with a 2-D parameter as the right operand (``x @ W`` in hand-written
  attention) like linear (per-channel axis 1 of the (in, out) weight); between two activations
  (attention's ``Q K^T`` and ``softmax · V``) both operands uint8 per tensor.
- embedding: the table only (weight-only, int8 per row, axis 0); ids stay int64.
- the model's output (the op that produces it): uint8 per tensor, so the exported model ends in
  QuantizeLinear -> DequantizeLinear like edgec's own quantizer (one output step is the export
  and verify tolerance).

``WeightBits`` 4 keeps the int8 container with codes in [-7, 7] (as edgec's ``int4`` mode):
opset 17 has no int4 type, and the CPU kernels pack such weights two per byte.

Attention: ``aten.scaled_dot_product_attention`` is one op with no matmul to annotate, so
``math_attention()`` swaps ``torch.nn.functional.scaled_dot_product_attention`` (what
nn.MultiheadAttention and most hand-written attention call) for its math form during
``torch.export``: ``softmax((q * scale) @ k^T + mask) @ v``. Dropout in attention and grouped
query attention keep torch's op (float).

PTQ observers: HistogramObserver (activations), PerChannelMinMaxObserver (weights). QAT:
FusedMovingAvgObsFakeQuantize over MovingAverageMinMaxObserver /
MovingAveragePerChannelMinMaxObserver, the pairing torchao's own QAT configs use.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

EPS = 2 ** -12


@dataclass(frozen=True)
class QuantizerConfig:
    """What the quantizer annotates and how (see the module docstring)."""

    weight_bits: int = 8       # 8, or 4 (codes in [-7, 7], int8 container)
    qat: bool = False          # fake quantizers that train instead of observers
    attention: bool = True     # activation x activation matmuls
    embedding: bool = True     # embedding tables, weight-only
    output: bool = True        # the model's output

    def __post_init__(self):
        if self.weight_bits not in (4, 8):
            raise ValueError(f"weight_bits must be 4 or 8, got {self.weight_bits}")

    @property
    def weight_qmax(self) -> int:
        return 2 ** (self.weight_bits - 1) - 1


def _specs(cfg: QuantizerConfig):
    """(activation spec, weight spec for an axis)."""
    from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, HistogramObserver,
                                           MovingAverageMinMaxObserver,
                                           MovingAveragePerChannelMinMaxObserver,
                                           PerChannelMinMaxObserver)
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    if cfg.qat:
        act_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver,
                                                          eps=EPS)
        w_ctr = FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver, eps=EPS)
    else:
        act_ctr = HistogramObserver.with_args(eps=EPS)
        w_ctr = PerChannelMinMaxObserver.with_args(eps=EPS)
    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
                           qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=act_ctr)
    q = cfg.weight_qmax

    def weight(axis: int) -> QuantizationSpec:
        return QuantizationSpec(dtype=torch.int8, quant_min=-q, quant_max=q,
                                qscheme=torch.per_channel_symmetric, ch_axis=axis,
                                observer_or_fake_quant_ctr=w_ctr)

    return act, weight


def _aten():
    aten = torch.ops.aten
    layers = {aten.conv1d.default: 0, aten.conv2d.default: 0, aten.conv3d.default: 0,
              aten.linear.default: 0, aten.conv_transpose1d.default: 1,
              aten.conv_transpose2d.input: 1, aten.conv_transpose3d.input: 1}
    matmuls = (aten.matmul.default, aten.mm.default, aten.bmm.default)
    return layers, matmuls, aten.baddbmm.default, aten.embedding.default


def _parameter(gm, node) -> torch.Tensor | None:
    """The float parameter a get_attr node reads, else None."""
    if node.op != "get_attr":
        return None
    try:
        value = gm.get_parameter(node.target)
    except AttributeError:
        try:
            value = gm.get_buffer(node.target)
        except AttributeError:
            return None
    return value if value.is_floating_point() else None


def _is_float_tensor(node) -> bool:
    val = getattr(node, "meta", {}).get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def make_quantizer(cfg: QuantizerConfig = QuantizerConfig()):
    """A torchao Quantizer that annotates what the module docstring lists."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    act, weight = _specs(cfg)
    layers, matmuls, baddbmm, embedding = _aten()

    def annotate_node(gm, node) -> QuantizationAnnotation | None:
        if node.target in layers and len(node.args) > 1:
            return QuantizationAnnotation(input_qspec_map={node.args[0]: act,
                                                           node.args[1]: weight(layers[node.target])},
                                          _annotated=True)
        if node.target in matmuls and len(node.args) > 1:
            a, b = node.args[:2]
            w = _parameter(gm, b)
            if w is not None and w.ndim == 2:
                return QuantizationAnnotation(input_qspec_map={a: act, b: weight(1)},
                                              _annotated=True)
            if cfg.attention and _parameter(gm, a) is None and w is None and \
                    _is_float_tensor(a) and _is_float_tensor(b):
                return QuantizationAnnotation(input_qspec_map={a: act, b: act}, _annotated=True)
            return None
        if node.target is baddbmm and cfg.attention and len(node.args) > 2:
            a, b = node.args[1:3]  # baddbmm(mask, q, k^T): nn.MultiheadAttention, need_weights
            if _is_float_tensor(a) and _is_float_tensor(b):
                return QuantizationAnnotation(input_qspec_map={a: act, b: act}, _annotated=True)
            return None
        if node.target is embedding and cfg.embedding:
            table = _parameter(gm, node.args[0])
            if table is not None and table.ndim == 2:
                return QuantizationAnnotation(input_qspec_map={node.args[0]: weight(0)},
                                              _annotated=True)
        return None

    class LayerQuantizer(Quantizer):
        def annotate(self, model):
            for node in model.graph.nodes:
                if node.op == "call_function":
                    ann = annotate_node(model, node)
                    if ann is not None:
                        node.meta["quantization_annotation"] = ann
            if cfg.output:
                self._annotate_output(model)
            return model

        @staticmethod
        def _annotate_output(model):
            out = next(n for n in model.graph.nodes if n.op == "output")
            values = out.args[0]
            values = values if isinstance(values, (tuple, list)) else (values,)
            if len(values) != 1 or not isinstance(values[0], torch.fx.Node):
                return
            node = values[0]
            if node.op != "call_function" or not _is_float_tensor(node):
                return
            ann = node.meta.get("quantization_annotation")
            if ann is None:
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    output_qspec=act, _annotated=True)
            else:
                ann.output_qspec = act

        def validate(self, model):
            pass

    return LayerQuantizer()


def _math_sdpa(original):
    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        if dropout_p or enable_gqa:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                            enable_gqa=enable_gqa)
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        scores = torch.matmul(query * scale, key.transpose(-2, -1))
        if is_causal:
            n, s = query.shape[-2], key.shape[-2]
            keep = torch.ones(n, s, dtype=torch.bool, device=query.device).tril()
            scores = scores.masked_fill(keep.logical_not(), float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(attn_mask.logical_not(), float("-inf"))
            else:
                scores = scores + attn_mask
        return torch.matmul(torch.softmax(scores, dim=-1), value)

    return sdpa


@contextlib.contextmanager
def math_attention(enabled: bool = True):
    """While exporting: F.scaled_dot_product_attention as matmul / softmax / matmul."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    if enabled:
        F.scaled_dot_product_attention = _math_sdpa(original)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
