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
from toolchain.compress.pt2e_quantizer import QuantizerConfig, make_quantizer, math_attention
from toolchain.errors import ModelError

log = logging.getLogger(__name__)

QUANTIZER = "torchao-pt2e"


class PT2EQuantized(ExportedProgramModule):
    """A torchao-converted program (int8 weights, QDQ activations) as an nn.Module."""

    weight_bits = 8
    weight_names: dict = {}  # torchao's frozen weight name -> the parameter it came from


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _export(model: nn.Module, x: torch.Tensor, attention: bool = True):
    """(exported program, static batch or None): dynamic batch when the model allows it.
    ``attention``: scaled_dot_product_attention in its matmul form (``math_attention``)."""
    with math_attention(attention):
        return _export_program(model, x)


def _export_program(model: nn.Module, x: torch.Tensor):
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


def calibrate(prepared: nn.Module, X: torch.Tensor, batch: int | None) -> None:
    """Run ``X`` through a prepared program (its observers record ranges)."""
    with torch.no_grad():
        step = batch or 128
        for i in range(0, len(X) - len(X) % step if batch else len(X), step):
            prepared(X[i:i + step])


def _weight_sources(gm: nn.Module, prepared: bool) -> dict[tuple[str, int], str]:
    """(annotated node, argument index) -> the get_attr target its weight is read from:
    the parameter's name in a prepared graph (through its observer), torchao's
    ``_frozen_paramN`` in a converted one (through its dequantize)."""
    found = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        for i, arg in enumerate(node.args[:3]):
            if not isinstance(arg, torch.fx.Node):
                continue
            src = arg
            if prepared and src.op == "call_module" and src.args:
                src = src.args[0]
            elif not prepared and src.op == "call_function" and src.args and \
                    "dequantize_per_channel" in str(src.target):
                src = src.args[0]
            else:
                continue
            if isinstance(src, torch.fx.Node) and src.op == "get_attr":
                found[(node.name, i)] = str(src.target)
    return found


def convert(prepared: nn.Module, batch: int | None, weight_bits: int) -> PT2EQuantized:
    """convert_pt2e, in eval mode, remembering which parameter each int8 weight came from
    (``weight_names``: frozen name -> parameter name, for readable ONNX and metadata names)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    params = {n for n, _ in prepared.named_parameters()}
    before = {k: v for k, v in _weight_sources(prepared, True).items() if v in params}
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    result = PT2EQuantized(converted, batch)
    result.weight_bits = weight_bits
    result.weight_names = {frozen: before[k] for k, frozen in
                           _weight_sources(converted, False).items() if k in before}
    return result


def quantize_pt2e(model: nn.Module, X: np.ndarray, samples: int = 512,
                  config: QuantizerConfig = QuantizerConfig()) -> PT2EQuantized:
    """Calibrate on ``X[:samples]`` and convert; the result runs like the float model."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    model = model.eval()
    X = torch.tensor(np.asarray(X[:samples]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program, batch = _export(model, X, config.attention)
        try:
            prepared = prepare_pt2e(program.module(), make_quantizer(config))
            calibrate(prepared, X, batch)
            return convert(prepared, batch, config.weight_bits)
        except Exception as exc:
            raise ModelError(f"quantize (torchao PT2E) failed: {_first(exc)}") from None


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
    # the exporter restores the module's training flag afterwards; True (a GraphModule's
    # default) would swap in torchao's training dropout, which has p=0.5 whatever p was
    model.program.training = False
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
    from toolchain.compress.export import _undo_shared_initializers

    proto = onnx.load_model_from_string(buf.getvalue())
    _undo_shared_initializers(proto.graph)  # equal layers (copies) get their own weights
    _name_weights(proto.graph, model.weight_names)
    log.info("torchao export: %d weight transpose(s) folded into their DequantizeLinear",
             fold_weight_transposes(proto))
    return proto


def _value(g: onnx.GraphProto, name: str):
    for t in g.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _name_weights(g: onnx.GraphProto, names: dict) -> None:
    """torchao's ``_frozen_paramN`` initializers -> ``<parameter>_quantized``."""
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    renamed = {}
    for t in g.initializer:
        if t.name not in names:
            continue
        new, k = f"{names[t.name]}_quantized", 1
        while new in taken:
            k += 1
            new = f"{names[t.name]}_quantized_{k}"
        taken.add(new)
        renamed[t.name], t.name = new, new
    for n in g.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]


def _layer_key(weight: str, node: onnx.NodeProto) -> str:
    """The module a quantized weight belongs to (``e.layers.0.self_attn.in_proj`` from
    ``e.layers.0.self_attn.in_proj_weight_quantized``), else the ONNX node's name."""
    base = weight.removesuffix("_transposed")
    if not base.endswith("_quantized"):
        return node.name
    base = base.removesuffix("_quantized")
    for suffix in (".weight", "_weight"):
        if base.endswith(suffix):
            return base[:-len(suffix)]
    return base


def _weight_bits(w: np.ndarray) -> int:
    """4 when every code is in [-7, 7] (int4 weights in their int8 container), else 8. The
    scales are symmetric per channel (amax / qmax), so an int8 layer always reaches +-127."""
    return 4 if w.size and int(np.abs(w.astype(np.int32)).max()) <= 7 else 8


def _float_entry(node: onnx.NodeProto, weight: str) -> dict:
    return {"op": node.op_type, "onnx_node": node.name, "onnx_op": node.op_type,
            "onnx_weight": weight, "weight_bits": None, "weight_axis": None,
            "weight_scale_pow2": False, "weight_frac_bits": None, "sparsity": 0.0,
            "act_bits": None, "act_signed": None, "act_scale": None, "act_zero_point": None,
            "act_frac_bits": None}


def _act_facts(g: onnx.GraphProto, dq: onnx.NodeProto | None) -> dict:
    """act_* entries of a per-tensor DequantizeLinear producing an activation, else {}."""
    if dq is None or dq.op_type != "DequantizeLinear":
        return {}
    scale, zp = _value(g, dq.input[1]), _value(g, dq.input[2])
    if scale is None or zp is None or scale.size != 1:
        return {}
    return {"act_bits": 8, "act_signed": bool(zp.dtype == np.int8), "act_scale": float(scale),
            "act_zero_point": int(zp), "act_frac_bits": None}


def layers_from_graph(proto: onnx.ModelProto) -> dict:
    """Metadata entries for each Conv / ConvTranspose / Gemm / MatMul whose weight is an int8
    initializer behind a DequantizeLinear (and float layers left as they are), and for each
    Gather reading a quantized table (op "Embedding", weight-only: no act_* facts). Keyed by
    the module the weight came from when its name says (``_name_weights``), else by node."""
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name for t in g.initializer}
    layers = {}
    for node in g.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather"):
            continue
        w_idx = 0 if node.op_type == "Gather" else 1
        dq = producer.get(node.input[w_idx])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            if node.op_type != "Gather" and node.input[1] in inits:  # a float layer
                layers[node.name] = _float_entry(node, node.input[1])
            continue
        w = _value(g, dq.input[0])
        if w.dtype != np.int8:
            continue
        entry = _float_entry(node, dq.input[0])
        entry.update(weight_bits=_weight_bits(w),
                     weight_axis=next((a.i for a in dq.attribute if a.name == "axis"), 1),
                     sparsity=round(float(np.mean(w == 0)), 6))
        if node.op_type == "Gather":
            entry["op"] = "Embedding"
        else:
            entry.update(_act_facts(g, producer.get(node.input[0])))
        key = _layer_key(dq.input[0], node)
        layers[key if key not in layers else node.name] = entry
    return layers


def output_from_graph(proto: onnx.ModelProto) -> dict | None:
    """The metadata's ``output`` entry: the act_* facts of the DequantizeLinear that produces
    the model's (only) output, or None for a float output."""
    g = proto.graph
    if len(g.output) != 1:
        return None
    producer = {o: n for n in g.node for o in n.output}
    facts = _act_facts(g, producer.get(g.output[0].name))
    return facts or None


def fold_weight_transposes(proto: onnx.ModelProto) -> int:
    """Transpose(DequantizeLinear(W int8, axis a)) of a 2-D constant weight -> one
    DequantizeLinear(W^T, axis 1 - a): the exporter writes Linear on 3-D inputs (attention's
    in_proj, out_proj) as MatMul(x, Transpose(W)), and this is the QDQ form edgec's own export
    and the CPU integer pass read (the weight behind its DequantizeLinear). Returns how many."""
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    inits = {t.name: t for t in g.initializer}
    drop, folded = set(), 0
    for node in g.node:
        if node.op_type != "Transpose":
            continue
        dq = producer.get(node.input[0])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        if dq is None or dq.op_type != "DequantizeLinear" or perm != [1, 0] \
                or dq.input[0] not in inits or uses.get(dq.output[0]) != 1:
            continue
        w = numpy_helper.to_array(inits[dq.input[0]])
        if w.ndim != 2 or w.dtype != np.int8:
            continue
        name = f"{dq.input[0]}_transposed"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name))
        if uses.get(dq.input[0]) == 1:
            drop.add(dq.input[0])
        axis = next((a for a in dq.attribute if a.name == "axis"), None)
        if axis is not None:
            axis.i = 1 - (axis.i % 2)
        dq.input[0] = name
        dq.output[0], node.output[0] = node.output[0], dq.output[0]  # DQ now writes Y
        drop.add(id(node))
        folded += 1
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    kept = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept)
    return folded
