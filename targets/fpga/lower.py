"""Lower an ONNX graph to the FPGA backend's layer list (the partitioner of this target).

Before: a checked ONNX model with static shapes; plain float or QDQ (QuantizeLinear ->
DequantizeLinear pairs with power-of-two scales). After: a list of ``Layer`` in data order,
each with float weights in PyTorch layout and the fixed-point grid its QDQ nodes imply.

The FPGA designs here are feed-forward chains (one data input per node). A node the target
cannot map raises UnsupportedOpError naming the node and the op; nothing is written then.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain.errors import UnsupportedOpError

from .precision import Fixed

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Conv", "BatchNormalization", "Relu", "Softmax",
                 "Flatten", "Reshape", "MaxPool", "AveragePool", "GlobalAveragePool", "QuantizeLinear", "DequantizeLinear",
                 "Identity", "Dropout")


@dataclass
class Layer:
    """One layer of the chain. ``weight`` uses PyTorch layout: (out, in) or (co, ci, kh, kw)."""

    name: str
    kind: str  # dense | conv2d | relu | softmax | flatten | maxpool2d | avgpool2d
    node: str  # the ONNX node it came from
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    weight_type: Fixed | None = None  # exact grid of quantized weights (from DQ or metadata)
    bias_type: Fixed | None = None
    out_type: Fixed | None = None  # grid of a Q/DQ pair right after this layer

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.weight.shape[1:])) if self.weight is not None else 0

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0]) if self.weight is not None else 0

    @property
    def sparsity(self) -> float:
        if self.weight is None or self.weight.size == 0:
            return 0.0
        return float(np.mean(self.weight == 0))


@dataclass
class LayerGraph:
    """The lowered model: input shape (no batch), its grid if quantized, and the layers."""

    input_name: str
    input_shape: tuple[int, ...]
    input_type: Fixed | None
    layers: list[Layer]
    compression: dict  # the edgec.compression metadata, or {}


def _sanitize(name: str, used: set[str]) -> str:
    base = re.sub(r"\W", "_", name).strip("_").lower() or "layer"
    if base[0].isdigit():
        base = "l_" + base
    out, n = base, 1
    while out in used:
        n += 1
        out = f"{base}_{n}"
    used.add(out)
    return out


def _pow2_type(node: onnx.NodeProto, scale: np.ndarray, zero: np.ndarray | None,
               dtype: np.dtype, target: str) -> Fixed:
    """The ap_fixed grid of a Q/DQ: int8 with scale 2^-f is ap_fixed<8, 8-f>.

    Per-channel power-of-two scales 2^-f_c widen the type to hold every channel exactly.
    """
    s = np.unique(np.asarray(scale, dtype=np.float64))
    exps = np.log2(s) if np.all(s > 0) else np.array([0.5])
    if not np.all(exps == np.round(exps)):
        raise UnsupportedOpError(node.op_type, node.name, target,
                                 f"scale {s.tolist()[:4]} is not a power of two; FPGA "
                                 "fixed-point types need power-of-two scales "
                                 "(e.g. edgec compress --quantize fixed<8,3>)")
    if zero is not None and np.any(np.asarray(zero) != 0):
        raise UnsupportedOpError(node.op_type, node.name, target,
                                 "non-zero zero point; use symmetric quantization")
    fmax, fmin = int(-exps.min()), int(-exps.max())
    bits = np.dtype(dtype).itemsize * 8
    signed = bool(np.issubdtype(np.dtype(dtype), np.signedinteger))
    return Fixed(bits + fmax - fmin, bits - fmin, signed)


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """Reshape a per-channel Q/DQ parameter to broadcast along ``axis``."""
    v = np.asarray(v)
    if v.ndim != 1 or ndim < 2:
        return v
    shape = [1] * ndim
    shape[axis % ndim] = v.shape[0]
    return v.reshape(shape)


class _Constants:
    """Initializers and Constant nodes, with DQ/Q/Transpose/Reshape folded where constant."""

    def __init__(self, model: onnx.ModelProto):
        self.values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.grids: dict[str, Fixed] = {}  # constant tensor -> exact grid from its DQ

    def has(self, name: str) -> bool:
        return name in self.values or name == ""

    def get(self, name: str) -> np.ndarray:
        return self.values[name]

    def fold(self, node: onnx.NodeProto, target: str) -> bool:
        """Evaluate ``node`` if all its inputs are constant; return whether it was folded."""
        if not node.input or not all(self.has(i) for i in node.input):
            if node.op_type == "Constant":
                attr = {a.name: a for a in node.attribute}
                self.values[node.output[0]] = numpy_helper.to_array(attr["value"].t)
                return True
            return False
        ins = [self.values.get(i) for i in node.input]
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        op = node.op_type
        if op == "DequantizeLinear":
            zero = ins[2] if len(ins) > 2 and ins[2] is not None else None
            self.grids[node.output[0]] = _pow2_type(node, ins[1], zero, ins[0].dtype, target)
            axis, nd = a.get("axis", 1), ins[0].ndim
            zp = _along(zero, axis, nd).astype(np.float64) if zero is not None else 0.0
            out = (ins[0].astype(np.float64) - zp) * _along(ins[1], axis, nd).astype(np.float64)
            out = out.astype(np.float32)
        elif op == "QuantizeLinear":
            zero = ins[2] if len(ins) > 2 and ins[2] is not None else np.uint8(0)
            axis, nd = a.get("axis", 1), ins[0].ndim
            info = np.iinfo(zero.dtype)
            q = np.clip(np.round(ins[0] / _along(ins[1], axis, nd)) + _along(zero, axis, nd),
                        info.min, info.max)
            out = q.astype(zero.dtype)
        elif op in ("Identity", "Cast"):
            out = ins[0] if op == "Identity" else ins[0].astype(
                onnx.helper.tensor_dtype_to_np_dtype(a["to"]))
        elif op == "Transpose":
            out = np.transpose(ins[0], a.get("perm"))
        elif op == "Reshape":
            out = ins[0].reshape([int(d) for d in ins[1]])
        else:
            return False
        self.values[node.output[0]] = out
        if op in ("Identity", "Transpose", "Reshape") and node.input[0] in self.grids:
            self.grids[node.output[0]] = self.grids[node.input[0]]
        return True


def _shape_of(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if vi.name == name:
            return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
    raise KeyError(name)


def lower(model: onnx.ModelProto, target: str) -> LayerGraph:
    """Turn ``model`` into a LayerGraph; raises UnsupportedOpError for anything unmappable."""
    consts = _Constants(model)
    inits = set(consts.values)
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    if len(graph_inputs) != 1 or len(model.graph.output) != 1:
        node = model.graph.node[0]
        raise UnsupportedOpError(node.op_type, node.name or node.output[0], target,
                                 "FPGA designs take one input and one output")
    inp = graph_inputs[0]
    current = inp.name
    layers: list[Layer] = []
    used: set[str] = set()
    input_type: Fixed | None = None
    pending_q: tuple[onnx.NodeProto, Fixed] | None = None

    for node in model.graph.node:
        if consts.fold(node, target):
            continue
        label = node.name or node.output[0]
        data_in = [i for i in node.input if i and not consts.has(i)]
        if node.op_type not in SUPPORTED_OPS:
            raise UnsupportedOpError(node.op_type, label, target,
                                     "the FPGA backend maps " + ", ".join(SUPPORTED_OPS))
        if data_in != [current]:
            raise UnsupportedOpError(node.op_type, label, target,
                                     "branching graphs are not supported (each node must take "
                                     "the previous node's output as its only data input)")
        op = node.op_type
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        in_shape = _shape_of(model, current)[1:]
        out_shape = _shape_of(model, node.output[0])[1:]
        current = node.output[0]
        if op in ("Identity", "Dropout"):
            continue
        if op == "QuantizeLinear":
            scale = consts.get(node.input[1])
            zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            dtype = zero.dtype if zero is not None else np.dtype(np.uint8)
            pending_q = (node, _pow2_type(node, scale, zero, dtype, target))
            continue
        if op == "DequantizeLinear":
            if pending_q is None:
                raise UnsupportedOpError(op, label, target, "a DequantizeLinear on the data "
                                         "path must follow a QuantizeLinear")
            grid = pending_q[1]
            pending_q = None
            if layers:
                layers[-1].out_type = grid
            else:  # ties to even, as QuantizeLinear; the cast happens before the FPGA's port
                input_type = replace(grid, rounding="RND_CONV")
            continue
        if pending_q is not None:
            raise UnsupportedOpError(pending_q[0].op_type, pending_q[0].name, target,
                                     "a QuantizeLinear must be followed by a DequantizeLinear")
        name = _sanitize(label, used)
        if op in ("Gemm", "MatMul"):
            w_name = node.input[1]
            w = consts.get(w_name).astype(np.float32)
            if op == "MatMul" or not a.get("transB", 0):
                w = w.T
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise UnsupportedOpError(op, label, target, "only transA=0, alpha=beta=1")
            if len(in_shape) != 1:
                raise UnsupportedOpError(op, label, target, "dense layers take flat inputs")
            b = consts.get(node.input[2]).astype(np.float32) if len(node.input) > 2 \
                and node.input[2] else None
            layers.append(Layer(name, "dense", label, in_shape, out_shape, np.ascontiguousarray(w),
                                b, {"weight_name": w_name}, consts.grids.get(w_name),
                                bias_type=consts.grids.get(node.input[2]) if b is not None
                                else None))
        elif op == "Add":
            prev = layers[-1] if layers else None
            c = consts.get(node.input[1] if node.input[0] == data_in[0] else node.input[0])
            if prev is None or prev.kind != "dense" or prev.bias is not None:
                raise UnsupportedOpError(op, label, target,
                                         "Add is mapped only as the bias of a MatMul")
            prev.bias = np.broadcast_to(c, (prev.n_out,)).astype(np.float32).copy()
            prev.out_shape = out_shape
        elif op == "Conv":
            if len(in_shape) != 3 or a.get("group", 1) != 1 or any(
                    d != 1 for d in a.get("dilations", [1, 1])):
                raise UnsupportedOpError(op, label, target,
                                         "only 2D convolutions without groups or dilation")
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or \
                    pads[0] != pads[2] or pads[1] != pads[3]:
                raise UnsupportedOpError(op, label, target, "only symmetric explicit padding")
            w_name = node.input[1]
            b = consts.get(node.input[2]).astype(np.float32) if len(node.input) > 2 \
                and node.input[2] else None
            layers.append(Layer(name, "conv2d", label, in_shape, out_shape,
                                consts.get(w_name).astype(np.float32), b,
                                {"stride": tuple(a.get("strides", [1, 1])),
                                 "padding": (pads[0], pads[1]), "weight_name": w_name},
                                weight_type=consts.grids.get(w_name)))
        elif op == "BatchNormalization":
            prev = layers[-1] if layers else None
            if prev is None or prev.kind not in ("conv2d", "dense"):
                raise UnsupportedOpError(op, label, target, "BatchNormalization is folded into "
                                         "the Conv or Gemm before it, and there is none")
            gamma, beta, mean, var = (consts.get(n).astype(np.float64) for n in node.input[1:5])
            k = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
            w = prev.weight.astype(np.float64) * k.reshape(-1, *([1] * (prev.weight.ndim - 1)))
            b0 = prev.bias.astype(np.float64) if prev.bias is not None else 0.0
            prev.weight = w.astype(np.float32)
            prev.bias = ((b0 - mean) * k + beta).astype(np.float32)
            prev.weight_type = prev.bias_type = None  # folding leaves the quantized grid
            prev.node += f"+{label}"
        elif op == "Relu":
            layers.append(Layer(name, "relu", label, in_shape, out_shape))
        elif op == "Softmax":
            axis = a.get("axis", -1)
            if len(out_shape) != 1 or axis not in (-1, 1):
                raise UnsupportedOpError(op, label, target, "softmax over the last axis of a "
                                         "flat tensor only")
            layers.append(Layer(name, "softmax", label, in_shape, out_shape))
        elif op in ("Flatten", "Reshape"):
            if len(out_shape) != 1:
                raise UnsupportedOpError(op, label, target, "only flattening to (N, features)")
            if len(in_shape) > 1:
                layers.append(Layer(name, "flatten", label, in_shape, out_shape))
        elif op in ("MaxPool", "AveragePool", "GlobalAveragePool"):
            if op == "GlobalAveragePool":
                k = tuple(in_shape[1:])
                s = k
            else:
                k = tuple(a.get("kernel_shape"))
                s = tuple(a.get("strides", k))
            if len(k) != 2 or k != s or any(a.get("pads", [0, 0, 0, 0])):
                raise UnsupportedOpError(op, label, target,
                                         "only 2D pooling with stride = kernel, no padding")
            kind = "maxpool2d" if op == "MaxPool" else "avgpool2d"
            layers.append(Layer(name, kind, label, in_shape, out_shape, attrs={"kernel": k}))
    if current != model.graph.output[0].name:
        raise UnsupportedOpError("(graph output)", model.graph.output[0].name, target,
                                 "the graph output is not produced by the layer chain")
    if not any(l.kind in ("dense", "conv2d") for l in layers):
        raise UnsupportedOpError(model.graph.node[0].op_type, model.graph.node[0].name, target,
                                 "the model has no Gemm, MatMul or Conv to implement")
    meta = {p.key: p.value for p in model.metadata_props}
    compression = json.loads(meta["edgec.compression"]) if "edgec.compression" in meta else {}
    _apply_metadata(layers, compression)
    return LayerGraph(inp.name, _shape_of(model, inp.name)[1:], input_type, layers, compression)


def _apply_metadata(layers: list[Layer], compression: dict) -> None:
    """Take weight grids from the compression metadata where the ONNX holds float weights.

    A layer entry is matched by its ``onnx_node`` (or ``onnx_weight``); its grid
    (``weight_bits``, ``weight_frac_bits``) is used only if every weight lies on it.
    """
    for layer in layers:
        if layer.weight is None:
            continue
        for torch_name, info in (compression.get("layers") or {}).items():
            if not isinstance(info, dict):
                continue
            nodes = set(layer.node.split("+"))
            if info.get("onnx_node") not in nodes and \
                    info.get("onnx_weight") != layer.attrs.get("weight_name"):
                continue
            layer.attrs["module"] = torch_name  # lets --reuse-factor name the PyTorch module
            bits, frac = info.get("weight_bits"), info.get("weight_frac_bits")
            if layer.weight_type is None and bits and frac is not None:
                grid = Fixed(int(bits), int(bits) - int(frac))
                if np.array_equal(grid.cast(layer.weight), layer.weight):
                    layer.weight_type = grid
            break
