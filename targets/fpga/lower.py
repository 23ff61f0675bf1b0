"""Lower an ONNX graph to the FPGA backend's layer list (the partitioner of this target).

Before: a checked ONNX model with static shapes; plain float or QDQ (QuantizeLinear ->
DequantizeLinear pairs with power-of-two scales). After: a list of ``Layer`` in data order,
each with float weights in PyTorch layout and the fixed-point grid its QDQ nodes imply.

The FPGA designs are feed-forward graphs with one input and one output: each layer names the
layers it reads (``inputs``), and branches meet in an Add (hls4ml's Merge) or a Concat
(hls4ml's Concatenate, two tensors at a time, so a Concat of n becomes n-1 layers). A node the
target cannot map raises UnsupportedOpError naming the node and the op; nothing is written.
``refusals`` lowers without stopping: every node the target cannot map, each with its reason
(a refused node stands in for a layer, so the nodes after it are judged on their own).
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

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Concat", "Conv", "BatchNormalization", "Relu",
                 "Clip", "Softmax", "Flatten", "Reshape", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "ReduceMean", "QuantizeLinear", "DequantizeLinear",
                 "Identity", "Dropout")
WEIGHTED_KINDS = ("dense", "conv1d", "conv2d", "dwconv2d")


@dataclass
class Layer:
    """One layer of the chain. ``weight`` uses PyTorch layout: (out, in) or (co, ci, kh, kw)."""

    name: str
    kind: str  # dense | conv1d | conv2d | dwconv2d | relu | relu6 | relu1 | softmax | flatten |
    #            maxpool2d | avgpool2d | add | concat
    node: str  # the ONNX node it came from
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    weight_type: Fixed | None = None  # exact grid of quantized weights (from DQ or metadata)
    bias_type: Fixed | None = None
    out_type: Fixed | None = None  # grid of a Q/DQ pair right after this layer
    inputs: tuple[str, ...] = ("",)  # the layers it reads, "" for the graph input

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
            axis, nd = a.get("axis", 1), ins[0].ndim
            zp = _along(zero, axis, nd).astype(np.float64) if zero is not None else 0.0
            out = (ins[0].astype(np.float64) - zp) * _along(ins[1], axis, nd).astype(np.float64)
            # the value first: a refused grid (see refusals) leaves the weight constant
            self.values[node.output[0]] = out.astype(np.float32)
            self.grids[node.output[0]] = _pow2_type(node, ins[1], zero, ins[0].dtype, target)
            return True
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


def _clip_bounds(consts: "_Constants", node: onnx.NodeProto, a: dict) -> tuple[float, float]:
    lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
    if len(node.input) > 1 and node.input[1]:
        lo = float(np.asarray(consts.get(node.input[1])).reshape(()))
    if len(node.input) > 2 and node.input[2]:
        hi = float(np.asarray(consts.get(node.input[2])).reshape(()))
    return float(lo), float(hi)


# Clip(min, max) bounds hls4ml has an activation for (nnet_activation.h)
CLIP_ACTIVATIONS = {(0.0, np.inf): "relu", (0.0, 6.0): "relu6", (0.0, 1.0): "relu1"}


class _Builder:
    """Layers in data order; which layer (or the graph input, "") produces each tensor."""

    def __init__(self, model: onnx.ModelProto, target: str, input_name: str):
        self.model, self.target = model, target
        self.layers: list[Layer] = []
        self.used: set[str] = set()
        self.producer: dict[str, str] = {input_name: ""}  # tensor -> layer name, "" = input
        self.readers: dict[str, int] = {}
        for node in model.graph.node:
            for i in node.input:
                self.readers[i] = self.readers.get(i, 0) + 1
        for o in model.graph.output:
            self.readers[o.name] = self.readers.get(o.name, 0) + 1
        self.input_type: Fixed | None = None

    def by_name(self, name: str) -> Layer | None:
        return next((l for l in self.layers if l.name == name), None) if name else None

    def add(self, layer: Layer, output: str) -> None:
        self.layers.append(layer)
        self.producer[output] = layer.name

    def sole_reader(self, tensor: str) -> bool:
        return self.readers.get(tensor, 0) == 1

    def stands_in(self, tensor: str) -> bool:
        """Whether ``tensor`` comes from a layer standing in for a refused node."""
        layer = self.by_name(self.producer.get(tensor, ""))
        return layer is not None and layer.kind == STAND_IN


def node_label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


# A layer standing in for a refused node (refusals only): what reads it is judged on its own.
STAND_IN = "refused"
# Ops that fold into the layer before them: after a stand-in there is nothing to judge.
_FOLDED_INTO_PREVIOUS = ("DequantizeLinear", "BatchNormalization", "Identity", "Dropout")


class _Refusals:
    """Where ``lower`` puts what it refuses: raised at once, or collected (``refusals``)."""

    def __init__(self, model: onnx.ModelProto, collect: bool):
        self.model, self.collect = model, collect
        self.nodes: dict[int, str] = {}  # node index -> why
        self.graph: list[tuple[str, str, str]] = []  # (node or tensor, op, why)

    def node(self, exc: UnsupportedOpError, idx: int) -> None:
        if not self.collect:
            raise exc
        named = [i for i, n in enumerate(self.model.graph.node) if node_label(n) == exc.node_name]
        self.nodes.setdefault(named[0] if named else idx, exc.detail)

    def whole(self, exc: UnsupportedOpError) -> None:
        if not self.collect:
            raise exc
        self.graph.append((exc.node_name, exc.op_type, exc.detail))


def refusals(model: onnx.ModelProto, target: str
             ) -> tuple[dict[int, str], list[tuple[str, str, str]]]:
    """Everything ``lower`` refuses, without stopping at the first: node index -> why, and the
    problems of the graph as a whole as (node or tensor, op, why)."""
    found = _Refusals(model, collect=True)
    _lower(model, target, found)
    return found.nodes, found.graph


def lower(model: onnx.ModelProto, target: str) -> LayerGraph:
    """Turn ``model`` into a LayerGraph; raises UnsupportedOpError for anything unmappable."""
    return _lower(model, target, _Refusals(model, collect=False))


def _lower(model: onnx.ModelProto, target: str, refused: _Refusals) -> LayerGraph | None:
    consts = _Constants(model)
    inits = set(consts.values)
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    if len(graph_inputs) != 1 or len(model.graph.output) != 1:
        node = model.graph.node[0]
        refused.whole(UnsupportedOpError(node.op_type, node_label(node), target,
                                         "FPGA designs take one input and one output"))
        if not graph_inputs:
            return None
    inp = graph_inputs[0]
    b = _Builder(model, target, inp.name)
    quantizers: dict[str, tuple[onnx.NodeProto, Fixed, str]] = {}  # Q output -> (node, grid, x)

    for idx, node in enumerate(model.graph.node):
        label = node_label(node)
        try:
            if consts.fold(node, target):
                continue
            data_in = [i for i in node.input if i and not consts.has(i)]
            if node.op_type not in SUPPORTED_OPS:
                raise UnsupportedOpError(node.op_type, label, target,
                                         "the FPGA backend maps " + ", ".join(SUPPORTED_OPS))
            unknown = [i for i in data_in if i not in b.producer and i not in quantizers]
            if unknown:
                raise UnsupportedOpError(node.op_type, label, target,
                                         f"its input '{unknown[0]}' comes from no mapped layer")
            stand_in = next((b.producer[i] for i in data_in if b.stands_in(i)), None)
            if stand_in is not None and (node.op_type in _FOLDED_INTO_PREVIOUS or (
                    node.op_type == "Add" and len(data_in) == 1)):
                b.producer.update({o: stand_in for o in node.output if o})
                continue
            try:
                _lower_node(b, consts, quantizers, node, label, data_in)
            except KeyError:  # a tensor of unknown shape: after a refused node, not judged
                if not refused.collect or stand_in is None:
                    raise
                b.producer.update({o: stand_in for o in node.output if o})
        except UnsupportedOpError as exc:
            refused.node(exc, idx)
            if not all(consts.has(o) for o in node.output if o):
                name = _sanitize(label, b.used)
                b.layers.append(Layer(name, STAND_IN, label, (), ()))
                b.producer.update({o: name for o in node.output if o})
                for o in node.output:
                    quantizers.pop(o, None)
    for q, (node, _, _) in quantizers.items():
        idx = list(model.graph.node).index(node)
        refused.node(UnsupportedOpError(node.op_type, node.name or q, target,
                                        "a QuantizeLinear must be followed by a "
                                        "DequantizeLinear"), idx)
    if refused.nodes or refused.graph:
        return None  # collected: the graph's shape is judged once every node maps
    try:
        return _finish(model, target, b, inp)
    except UnsupportedOpError as exc:
        refused.whole(exc)
        return None


def _finish(model: onnx.ModelProto, target: str, b: _Builder,
            inp: onnx.ValueInfoProto) -> LayerGraph:
    """Check the graph's shape (one output, from the last layer, nothing dead); the graph."""
    out = model.graph.output[0].name
    if out not in b.producer or not b.producer[out]:
        raise UnsupportedOpError("(graph output)", out, target,
                                 "the graph output is not produced by a mapped layer")
    layers = b.layers
    if not any(l.kind in WEIGHTED_KINDS for l in layers):
        raise UnsupportedOpError(model.graph.node[0].op_type, model.graph.node[0].name, target,
                                 "the model has no Gemm, MatMul or Conv to implement")
    if layers[-1].name != b.producer[out]:
        raise UnsupportedOpError("(graph output)", out, target,
                                 "the graph output must be the last layer's")
    dead = set(l.name for l in layers) - {i for l in layers for i in l.inputs} - {layers[-1].name}
    if dead:
        raise UnsupportedOpError("(graph output)", out, target,
                                 f"layer '{sorted(dead)[0]}' feeds no output (FPGA designs "
                                 "have one output)")
    meta = {p.key: p.value for p in model.metadata_props}
    compression = json.loads(meta["edgec.compression"]) if "edgec.compression" in meta else {}
    _apply_metadata(layers, compression)
    return LayerGraph(inp.name, _shape_of(model, inp.name)[1:], b.input_type, layers,
                      compression)


def _lower_node(b: _Builder, consts: _Constants, quantizers: dict, node: onnx.NodeProto,
                label: str, data_in: list[str]) -> None:
    target, model = b.target, b.model
    op = node.op_type
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    if op == "DequantizeLinear":
        if not data_in or data_in[0] not in quantizers:
            raise UnsupportedOpError(op, label, target, "a DequantizeLinear on the data "
                                     "path must follow a QuantizeLinear")
        q_node, grid, x = quantizers.pop(data_in[0])
        src = b.producer[x]
        layer = b.by_name(src)
        if layer is None:  # ties to even, as QuantizeLinear; the cast is before the port
            if b.input_type not in (None, replace(grid, rounding="RND_CONV")):
                raise UnsupportedOpError(op, label, target, "the input is quantized twice "
                                         "with different grids")
            b.input_type = replace(grid, rounding="RND_CONV")
        else:
            if layer.out_type not in (None, grid):
                raise UnsupportedOpError(op, label, target, f"layer '{layer.node}' is "
                                         "quantized twice with different grids")
            layer.out_type = grid
        b.producer[node.output[0]] = src
        return
    if any(i in quantizers for i in data_in):
        q = quantizers[next(i for i in data_in if i in quantizers)][0]
        raise UnsupportedOpError(q.op_type, q.name, target,
                                 "a QuantizeLinear must be followed by a DequantizeLinear")
    if op == "QuantizeLinear":
        scale = consts.get(node.input[1])
        zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        dtype = zero.dtype if zero is not None else np.dtype(np.uint8)
        quantizers[node.output[0]] = (node, _pow2_type(node, scale, zero, dtype, target),
                                      data_in[0])
        return
    if op in ("Add", "Concat") and len(data_in) > 1:
        _lower_merge(b, node, label, data_in, a)
        return
    if len(data_in) != 1:
        raise UnsupportedOpError(op, label, target, f"{len(data_in)} data inputs; only Add "
                                 "and Concat merge branches")
    x = data_in[0]
    src = b.producer[x]
    in_shape = _shape_of(model, x)[1:]
    out_shape = _shape_of(model, node.output[0])[1:]
    if op in ("Identity", "Dropout"):
        b.producer[node.output[0]] = src
        return
    name = _sanitize(label, b.used)
    inputs = (src,)
    if op in ("Gemm", "MatMul"):
        w_name = node.input[1]
        w = consts.get(w_name).astype(np.float32)
        if op == "MatMul" or not a.get("transB", 0):
            w = w.T
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise UnsupportedOpError(op, label, target, "only transA=0, alpha=beta=1")
        if len(in_shape) != 1:
            raise UnsupportedOpError(op, label, target, "dense layers take flat inputs")
        bias = consts.get(node.input[2]).astype(np.float32) if len(node.input) > 2 \
            and node.input[2] else None
        b.add(Layer(name, "dense", label, in_shape, out_shape, np.ascontiguousarray(w), bias,
                    {"weight_name": w_name}, consts.grids.get(w_name),
                    bias_type=consts.grids.get(node.input[2]) if bias is not None else None,
                    inputs=inputs), node.output[0])
    elif op == "Add":  # with a constant: the bias of the MatMul before it
        prev = b.by_name(src)
        c = consts.get(node.input[1] if node.input[0] == x else node.input[0])
        if prev is None or prev.kind != "dense" or prev.bias is not None \
                or not b.sole_reader(x) or prev.out_type is not None:
            raise UnsupportedOpError(op, label, target, "Add of a constant is mapped only as "
                                     "the bias of a MatMul")
        prev.bias = np.broadcast_to(c, (prev.n_out,)).astype(np.float32).copy()
        prev.out_shape = out_shape
        b.producer[node.output[0]] = src
    elif op == "Conv":
        _lower_conv(b, consts, node, label, a, name, in_shape, out_shape, inputs)
    elif op == "BatchNormalization":
        prev = b.by_name(src)
        if prev is None or prev.kind not in WEIGHTED_KINDS or not b.sole_reader(x) \
                or prev.out_type is not None:
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
        b.producer[node.output[0]] = src
    elif op in ("Relu", "Clip"):
        kind = "relu"
        if op == "Clip":
            bounds = _clip_bounds(consts, node, a)
            kind = CLIP_ACTIVATIONS.get(bounds)
            if kind is None:
                raise UnsupportedOpError(op, label, target, f"bounds {list(bounds)}: hls4ml "
                                         "has activations for Clip(0, 6) (ReLU6), Clip(0, 1) "
                                         "and Clip(0, inf) (ReLU) only")
        b.add(Layer(name, kind, label, in_shape, out_shape, inputs=inputs), node.output[0])
    elif op == "Softmax":
        axis = a.get("axis", -1)
        if len(out_shape) != 1 or axis not in (-1, 1):
            raise UnsupportedOpError(op, label, target, "softmax over the last axis of a "
                                     "flat tensor only")
        b.add(Layer(name, "softmax", label, in_shape, out_shape, inputs=inputs), node.output[0])
    elif op in ("Flatten", "Reshape"):
        if len(out_shape) != 1:
            raise UnsupportedOpError(op, label, target, "only flattening to (N, features)")
        if len(in_shape) > 1:
            b.add(Layer(name, "flatten", label, in_shape, out_shape, inputs=inputs),
                  node.output[0])
        else:
            b.producer[node.output[0]] = src
    elif op == "ReduceMean":  # x.mean((2, 3)): a global average pool (then a flatten)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = consts.get(node.input[1]).reshape(-1).tolist()
        rank = len(in_shape) + 1
        if len(in_shape) != 3 or sorted(int(x) % rank for x in axes or ()) != [2, 3]:
            raise UnsupportedOpError(op, label, target, "only a mean over both spatial axes "
                                     "of a (N, C, H, W) tensor (a global average pool)")
        pooled = (in_shape[0], 1, 1)
        if a.get("keepdims", 1):
            b.add(Layer(name, "avgpool2d", label, in_shape, out_shape,
                        attrs={"kernel": tuple(in_shape[1:])}, inputs=inputs), node.output[0])
        else:
            b.add(Layer(name, "avgpool2d", label, in_shape, pooled,
                        attrs={"kernel": tuple(in_shape[1:])}, inputs=inputs), node.output[0])
            flat = _sanitize(f"{label}_flatten", b.used)
            b.add(Layer(flat, "flatten", label, pooled, out_shape, inputs=(name,)),
                  node.output[0])
    elif op in ("MaxPool", "AveragePool", "GlobalAveragePool"):
        if op == "GlobalAveragePool":
            k = tuple(in_shape[1:])
            st = k
        else:
            k = tuple(a.get("kernel_shape"))
            st = tuple(a.get("strides", k))
        if len(k) != 2 or k != st or any(a.get("pads", [0, 0, 0, 0])):
            raise UnsupportedOpError(op, label, target,
                                     "only 2D pooling with stride = kernel, no padding")
        kind = "maxpool2d" if op == "MaxPool" else "avgpool2d"
        b.add(Layer(name, kind, label, in_shape, out_shape, attrs={"kernel": k},
                    inputs=inputs), node.output[0])


def _lower_conv(b, consts, node, label, a, name, in_shape, out_shape, inputs) -> None:
    target, op = b.target, node.op_type
    rank = len(in_shape) - 1
    if rank not in (1, 2):
        raise UnsupportedOpError(op, label, target, "only 1D and 2D convolutions")
    group = a.get("group", 1)
    weight = consts.get(node.input[1])
    depthwise = group == in_shape[0] and weight.shape[0] == group and rank == 2
    if group != 1 and not depthwise:
        raise UnsupportedOpError(op, label, target, f"group={group}: hls4ml 1.3 has depthwise "
                                 "2D convolutions (one filter per channel) but no other "
                                 "grouped or 1D depthwise convolution")
    if any(d != 1 for d in a.get("dilations", [1] * rank)):
        raise UnsupportedOpError(op, label, target, "dilated convolutions are not mapped")
    pads = list(a.get("pads", [0] * 2 * rank))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or \
            pads[:rank] != pads[rank:]:
        raise UnsupportedOpError(op, label, target, "only symmetric explicit padding")
    w_name = node.input[1]
    bias = consts.get(node.input[2]).astype(np.float32) if len(node.input) > 2 \
        and node.input[2] else None
    kind = "dwconv2d" if group != 1 else ("conv2d" if rank == 2 else "conv1d")
    b.add(Layer(name, kind, label, in_shape, out_shape,
                consts.get(w_name).astype(np.float32), bias,
                {"stride": tuple(a.get("strides", [1] * rank)), "padding": tuple(pads[:rank]),
                 "weight_name": w_name},
                weight_type=consts.grids.get(w_name), inputs=inputs), node.output[0])


def _lower_merge(b: _Builder, node, label, data_in, a) -> None:
    """Add of two branches (hls4ml Merge) or Concat (pairwise: hls4ml merges two at a time)."""
    target, model = b.target, b.model
    shapes = [_shape_of(model, i)[1:] for i in data_in]
    out_shape = _shape_of(model, node.output[0])[1:]
    srcs = [b.producer[i] for i in data_in]
    if "" in srcs:
        raise UnsupportedOpError(node.op_type, label, target, "the graph input feeds a merge "
                                 "directly; hls4ml merges layer outputs")
    if node.op_type == "Add":
        if len(data_in) != 2 or shapes[0] != shapes[1]:
            raise UnsupportedOpError(node.op_type, label, target, "Add of two tensors of one "
                                     f"shape only (got {shapes}; hls4ml's Merge does not "
                                     "broadcast)")
        name = _sanitize(label, b.used)
        b.add(Layer(name, "add", label, shapes[0], out_shape, inputs=tuple(srcs)),
              node.output[0])
        return
    rank = len(out_shape) + 1
    axis = a.get("axis", 1)
    axis = axis + rank if axis < 0 else axis
    if axis != 1 or rank > 4:
        raise UnsupportedOpError(node.op_type, label, target, "Concat along the channel axis "
                                 "(axis 1) of tensors of rank <= 4 only")
    left, left_shape = srcs[0], shapes[0]
    for k, (src, shape) in enumerate(zip(srcs[1:], shapes[1:])):
        joined = (left_shape[0] + shape[0],) + tuple(left_shape[1:])
        name = _sanitize(label if k == 0 else f"{label}_{k}", b.used)
        b.add(Layer(name, "concat", label, left_shape, joined, attrs={"axis": 1},
                    inputs=(left, src)), node.output[0])
        left, left_shape = name, joined


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
