"""int8 quantization with torchao's PT2E flow, for layers the hand-written quantizer refuses.

``quantize.py`` fake-quantizes Conv2d / Linear modules in place, which keeps QAT, pruning masks
and the per-layer metadata simple, but stops at Conv1d, ConvTranspose and the like. torchao
(0.18; torch 2.13 has no ``torch.ao.quantization.quantize_pt2e`` of its own) quantizes a
``torch.export`` graph instead, so it takes any op its quantizer annotates. Flow:

1. ``torch.export.export`` the model (batch dimension dynamic when the model allows it, else
   the first sample's batch size, run in chunks);
2. ``prepare_pt2e`` with ``X86InductorQuantizer``'s default config (weights int8 per output
   channel, symmetric, PerChannelMinMaxObserver; activations uint8 per tensor,
   HistogramObserver), calibrated on the run's data (no labels needed), ``convert_pt2e``;
3. export: the converted graph holds ``quantized_decomposed`` quantize / dequantize ops, which
   the TorchScript ONNX exporter writes as QuantizeLinear / DequantizeLinear through the
   symbolics registered here; the int8 weights stay int8 initializers.

Why this quantizer: torchao's XNNPACKQuantizer moved to ExecuTorch (not installed); the x86
and ARM inductor quantizers give the same QDQ form, x86's covers conv1d/2d and linear. The
metadata's per-layer entries are read back from the ONNX graph (keyed by ONNX node name:
there are no torch modules to name), in the format ``toolchain.compress`` documents.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from toolchain.compress.program import ExportedProgramModule
from toolchain.errors import ModelError

log = logging.getLogger(__name__)

QUANTIZER = "torchao-pt2e"


def _layer_quantizer():
    """A torchao Quantizer that annotates every conv (1-d, 2-d, transposed) and linear op:
    input activation uint8 per tensor (HistogramObserver), weight int8 symmetric per output
    channel (axis 0; axis 1 for transposed convs, whose weights are (in, out, k...)).
    torchao's x86 quantizer annotates conv2d and linear only, which misses what this path is
    for."""
    from torchao.quantization.pt2e import HistogramObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import (QuantizationAnnotation, QuantizationSpec,
                                                     Quantizer)

    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255,
                           qscheme=torch.per_tensor_affine,
                           observer_or_fake_quant_ctr=HistogramObserver.with_args(eps=2 ** -12))

    def weight(axis):
        return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127,
                                qscheme=torch.per_channel_symmetric, ch_axis=axis,
                                observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(
                                    eps=2 ** -12))

    aten = torch.ops.aten
    ops = {aten.conv1d.default: 0, aten.conv2d.default: 0, aten.conv3d.default: 0,
           aten.linear.default: 0, aten.conv_transpose1d.default: 1,
           aten.conv_transpose2d.input: 1, aten.conv_transpose3d.input: 1}

    class LayerQuantizer(Quantizer):
        def annotate(self, model):
            for node in model.graph.nodes:
                if node.op == "call_function" and node.target in ops and len(node.args) > 1:
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={node.args[0]: act, node.args[1]: weight(ops[node.target])},
                        _annotated=True)
            return model

        def validate(self, model):
            pass

    return LayerQuantizer()


class PT2EQuantized(ExportedProgramModule):
    """A torchao-converted program (int8 weights, QDQ activations) as an nn.Module."""

    weight_bits = 8


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _export(model: nn.Module, x: torch.Tensor):
    """(exported program, static batch or None): dynamic batch when the model allows it."""
    try:
        batch = torch.export.Dim("batch", min=1)
        return torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)), None
    except Exception as exc:  # a model that fixes its batch size: export it as it is
        log.info("torch.export with a dynamic batch failed (%s); static batch 1", _first(exc))
    try:
        return torch.export.export(model, (x[:1],)), 1
    except Exception as exc:
        raise ModelError(f"quantize (torchao): torch.export cannot capture the model: "
                         f"{_first(exc)}") from None


def quantize_pt2e(model: nn.Module, X: np.ndarray, samples: int = 512) -> PT2EQuantized:
    """Calibrate on ``X[:samples]`` and convert; the result runs like the float model."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = model.eval()
    X = torch.tensor(np.asarray(X[:samples]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program, batch = _export(model, X)
        quantizer = _layer_quantizer()
        try:
            prepared = prepare_pt2e(program.module(), quantizer)
            with torch.no_grad():
                step = batch or 128
                for i in range(0, len(X) - len(X) % step if batch else len(X), step):
                    prepared(X[i:i + step])
            converted = convert_pt2e(prepared)
        except Exception as exc:
            raise ModelError(f"quantize (torchao PT2E) failed: {_first(exc)}") from None
    move_exported_model_to_eval(converted)
    return PT2EQuantized(converted, batch)


# ---------------------------------------------------------------- ONNX export
def _const(value):
    from torch.onnx import symbolic_helper as sh

    return sh._maybe_get_const(value, "f")


def _zero_point(g, zp, qmin):
    from torch.onnx import symbolic_helper as sh

    signed = int(sh._maybe_get_const(qmin, "i")) < 0
    dtype = torch.int8 if signed else torch.uint8
    return g.op("Constant", value_t=torch.tensor(int(sh._maybe_get_const(zp, "i")), dtype=dtype))


def _quantize(g, x, scale, zp, qmin, qmax, dtype, *rest):
    return g.op("QuantizeLinear", x, g.op("Constant", value_t=torch.tensor(float(_const(scale)))),
                _zero_point(g, zp, qmin))


def _dequantize(g, x, scale, zp, qmin, qmax, dtype, *rest):
    return g.op("DequantizeLinear", x,
                g.op("Constant", value_t=torch.tensor(float(_const(scale)))),
                _zero_point(g, zp, qmin))


def _dequantize_channel(g, x, scales, zps, axis, qmin, qmax, dtype, *rest):
    from torch.onnx import symbolic_helper as sh

    return g.op("DequantizeLinear", x, scales, g.op("Cast", zps, to_i=onnx.TensorProto.INT8),
                axis_i=sh._get_const(axis, "i", "axis"))


_REGISTERED = []


def _register_symbolics(opset: int) -> None:
    if opset in _REGISTERED:
        return
    from torch.onnx import register_custom_op_symbolic

    for name, fn in (("quantize_per_tensor", _quantize), ("dequantize_per_tensor", _dequantize),
                     ("dequantize_per_channel", _dequantize_channel)):
        register_custom_op_symbolic(f"quantized_decomposed::{name}", fn, opset)
    _REGISTERED.append(opset)


def export_proto(model: PT2EQuantized, x: torch.Tensor, input_name: str, output_name: str,
                 batch: int | None, opset: int) -> onnx.ModelProto:
    """The converted program as a QDQ ONNX model (TorchScript exporter + the symbolics)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    _register_symbolics(opset)
    allow_exported_model_train_eval(model.program)
    n = model.batch or batch or 1
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.program, (x[:n],), buf, dynamo=False, opset_version=opset,
                              input_names=[input_name], output_names=[output_name],
                              dynamic_axes=None if batch else
                              {input_name: {0: "batch"}, output_name: {0: "batch"}},
                              do_constant_folding=True)
        except Exception as exc:
            raise ModelError(f"torch.onnx.export of the torchao-quantized model failed: "
                             f"{_first(exc)}") from None
    return onnx.load_model_from_string(buf.getvalue())


def _value(g: onnx.GraphProto, name: str):
    for t in g.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def layers_from_graph(proto: onnx.ModelProto) -> dict:
    """Metadata entries for each Conv / ConvTranspose / Gemm / MatMul whose weight is an int8
    initializer behind a DequantizeLinear (and float layers left as they are)."""
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name for t in g.initializer}
    layers = {}
    for node in g.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            if node.input[1] in inits:  # a float layer
                layers[node.name] = {"op": node.op_type, "onnx_node": node.name,
                                     "onnx_op": node.op_type, "onnx_weight": node.input[1],
                                     "weight_bits": None, "weight_axis": None,
                                     "weight_scale_pow2": False, "weight_frac_bits": None,
                                     "sparsity": 0.0, "act_bits": None, "act_signed": None,
                                     "act_scale": None, "act_zero_point": None,
                                     "act_frac_bits": None}
            continue
        w = _value(g, dq.input[0])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        entry = {"op": node.op_type, "onnx_node": node.name, "onnx_op": node.op_type,
                 "onnx_weight": dq.input[0], "weight_bits": 8, "weight_axis": axis,
                 "weight_scale_pow2": False, "weight_frac_bits": None,
                 "sparsity": round(float(np.mean(w == 0)), 6), "act_bits": None,
                 "act_signed": None, "act_scale": None, "act_zero_point": None,
                 "act_frac_bits": None}
        act = producer.get(node.input[0])
        if act is not None and act.op_type == "DequantizeLinear":
            scale, zp = _value(g, act.input[1]), _value(g, act.input[2])
            if scale is not None and zp is not None and scale.size == 1:
                entry.update(act_bits=8, act_signed=bool(zp.dtype == np.int8),
                             act_scale=float(scale), act_zero_point=int(zp))
        layers[node.name] = entry
    return layers
