"""UnrollRecurrent: LSTM, GRU and RNN nodes become plain ops over a static, unrolled sequence.

TVM's ONNX importer has no converter for the recurrent ops, and a static plan has no loops, so
each recurrent node is written out step by step. Before: ``LSTM`` / ``GRU`` / ``RNN`` nodes
(any direction, layout 0 or 1, optional initial states, peepholes, ``clip``, the activations
of the ONNX spec, GRU ``linear_before_reset`` 0 or 1) whose weights W, R, B (and P) are
constants and whose input X has a static shape. After: per direction one MatMul projects
the whole input sequence (biases folded in), then each time step is a MatMul by the
recurrent weights, Slice per gate, the gate activations and elementwise Mul/Add; ``Y``,
``Y_h`` and ``Y_c`` are Concat/Reshape/Transpose of the step states, under the node's output
names, exactly as the spec defines them. ``sequence_lens``, constant or a graph input, masks
the steps past each batch entry's length (state kept, Y zero), which is what the spec (and
onnxruntime) compute. What cannot be unrolled (non-constant weights, dynamic shapes,
``input_forget``, unknown activations) is a one-line UnsupportedOpError naming the node.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.errors import ModelError, UnsupportedOpError
from toolchain.passes import Pass
from toolchain.passes.graph import remove_unused_initializers

log = logging.getLogger(__name__)

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"),
                       "RNN": ("Tanh",)}
# activation -> (uses alpha, uses beta, default alpha, default beta), per the ONNX spec
ACTIVATIONS = {
    "Sigmoid": (False, False, 0.0, 0.0), "Tanh": (False, False, 0.0, 0.0),
    "Relu": (False, False, 0.0, 0.0), "Softsign": (False, False, 0.0, 0.0),
    "Softplus": (False, False, 0.0, 0.0), "LeakyRelu": (True, False, 0.01, 0.0),
    "ThresholdedRelu": (True, False, 1.0, 0.0), "Elu": (True, False, 1.0, 0.0),
    "HardSigmoid": (True, True, 0.2, 0.5), "Affine": (True, True, 1.0, 0.0),
    "ScaledTanh": (True, True, 1.0, 1.0),
}
_LOWER = {k.lower(): k for k in ACTIVATIONS}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    out = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                     for d in t.shape.dim)
        out[vi.name] = dims
    return out


class _ShapeValues:
    """Values computed from constants and static shapes only (torch exports its zero initial
    states as ``Expand(0, Concat(..., Shape(x)[1], ...))``, which TVM's importer cannot take)."""

    def __init__(self, model: onnx.ModelProto, consts: dict, shapes: dict):
        self.model, self.values, self.shapes = model, dict(consts), shapes
        self.producer = {o: n for n in model.graph.node for o in n.output}

    def get(self, name: str, depth: int = 0) -> np.ndarray | None:
        if name in self.values:
            return self.values[name]
        node = self.producer.get(name)
        if node is None or depth > 64 or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in ("Shape", "Size"):
            shape = self.shapes.get(node.input[0])
            if shape is None or -1 in shape:
                return None
            if node.op_type == "Size":
                value = np.array(int(np.prod(shape)), np.int64)
            else:
                a = _attrs(node)
                value = np.array(shape[a.get("start", 0):a.get("end", len(shape))], np.int64)
        elif node.op_type in ("If", "Loop", "Scan", "RandomNormal", "RandomUniform",
                              "RandomNormalLike", "RandomUniformLike"):
            return None
        else:
            ins = [self.get(i, depth + 1) if i else None for i in node.input]
            if any(v is None for i, v in zip(node.input, ins) if i):
                return None
            from onnx.reference import ReferenceEvaluator

            try:
                sess = ReferenceEvaluator(helper.make_model(
                    helper.make_graph([node], "eval", [], [helper.make_tensor_value_info(
                        o, onnx.TensorProto.UNDEFINED, None) for o in node.output]),
                    opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version))
                results = sess.run(None, {i: v for i, v in zip(node.input, ins) if i})
            except Exception:  # noqa: BLE001  (not evaluable here: stays a run-time value)
                return None
            for o, r in zip(node.output, results):
                self.values[o] = np.asarray(r)
            return self.values.get(name)
        self.values[name] = value
        return value


class _Emitter:
    """Appends nodes and constants with fresh names under one prefix."""

    def __init__(self, model: onnx.ModelProto, prefix: str, dtype: np.dtype, opset: int,
                 taken: set[str]):
        self.model, self.prefix, self.dtype, self.opset = model, prefix, dtype, opset
        self.taken = taken
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def name(self, what: str) -> str:
        while True:
            self.count += 1
            n = f"{self.prefix}/{what}_{self.count}"
            if n not in self.taken:
                self.taken.add(n)
                return n

    def const(self, value, what: str = "const", dtype=None) -> str:
        name = self.name(what)
        arr = np.array(value, dtype=dtype or self.dtype)  # 0-d stays 0-d
        self.model.graph.initializer.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        if self.opset >= 10:
            ints = [self.const([v], "idx", np.int64) for v in (start, end, axis)]
            return self.op("Slice", [x, *ints])
        return self.op("Slice", [x], axes=[axis], starts=[start], ends=[end])

    def reshape(self, x: str, shape, out: str | None = None) -> str:
        return self.op("Reshape", [x, self.const(list(shape), "shape", np.int64)], out)

    def take(self, x: str, axis: int, index: int, shape) -> str:
        """x[index] along ``axis``, that axis dropped (the result has ``shape``). Slice and
        Reshape, not Gather: TVM's take warns about unchecked indices."""
        return self.reshape(self.slice(x, axis, index, index + 1), shape)

    def clip(self, x: str, limit: float) -> str:
        if self.opset >= 11:
            return self.op("Clip", [x, self.const(-limit), self.const(limit)])
        return self.op("Clip", [x], min=-float(limit), max=float(limit))

    def activation(self, x: str, spec: tuple[str, float, float]) -> str:
        kind, alpha, beta = spec
        if kind in ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus"):
            return self.op(kind, [x])
        if kind in ("LeakyRelu", "Elu"):
            return self.op(kind, [x], alpha=float(alpha))
        if kind == "HardSigmoid":
            return self.op(kind, [x], alpha=float(alpha), beta=float(beta))
        if kind == "Affine":
            return self.op("Add", [self.op("Mul", [x, self.const(alpha)]), self.const(beta)])
        if kind == "ScaledTanh":
            inner = self.op("Tanh", [self.op("Mul", [x, self.const(beta)])])
            return self.op("Mul", [inner, self.const(alpha)])
        # ThresholdedRelu: x where x > alpha, else 0
        above = self.op("Greater", [x, self.const(alpha)])
        return self.op("Mul", [x, self.op("Cast", [above], to=_elem(self.dtype))])


def _elem(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class _Node:
    """One recurrent node's parameters, checked."""

    def __init__(self, model, node, consts, shapes, label, target, static):
        self.op, self.label, self.node = node.op_type, label, node
        a = _attrs(node)

        def refuse(why: str):
            return UnsupportedOpError(self.op, label, target, f"cannot unroll it: {why}")

        ins = list(node.input) + [""] * (8 - len(node.input))
        self.x = ins[0]
        for pos, what in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
            if ins[pos] and ins[pos] not in consts:
                raise refuse(f"its {what} input '{ins[pos]}' is not a constant")
        self.W, self.R = consts[ins[1]], consts[ins[2]]
        self.dirs = {"forward": ["forward"], "reverse": ["reverse"],
                     "bidirectional": ["forward", "reverse"]}.get(
            _text(a.get("direction", "forward")))
        if self.dirs is None:
            raise refuse(f"unknown direction '{_text(a['direction'])}'")
        self.layout = int(a.get("layout", 0))
        if a.get("input_forget", 0):
            raise refuse("input_forget=1 (coupled input and forget gates) is not supported")
        n = GATES[self.op]
        self.H = int(a.get("hidden_size", self.R.shape[-1]))
        D = len(self.dirs)
        if self.W.shape[0] != D or self.W.shape[1] != n * self.H or self.R.shape != (
                D, n * self.H, self.H):
            raise ModelError(f"node '{label}' ({self.op}): W {self.W.shape} / R "
                             f"{self.R.shape} do not match hidden_size {self.H}, {D} direction(s)")
        self.B = consts[ins[3]] if ins[3] else np.zeros((D, 2 * n * self.H), self.W.dtype)
        self.P = consts[ins[7]] if ins[7] else None
        self.lens, self.h0, self.c0 = ins[4], ins[5], ins[6]
        self.clip = a.get("clip")
        self.linear_before_reset = int(a.get("linear_before_reset", 0))
        self.acts = self._activations(a, D, refuse)
        xs = shapes.get(self.x)
        if xs is None or len(xs) != 3 or min(xs) < 1:
            raise ModelError(f"node '{label}' ({self.op}): unrolling needs the static shape of "
                             f"its input '{self.x}' (got {xs}); give --input-shape")
        self.S, self.N = (xs[0], xs[1]) if self.layout == 0 else (xs[1], xs[0])
        self.I = xs[2]
        self.static = static.get
        self.lens_const = static.get(self.lens) if self.lens else None
        if self.lens_const is not None:
            lens = np.asarray(self.lens_const).reshape(-1)
            if lens.shape != (self.N,) or lens.min() < 0 or lens.max() > self.S:
                raise ModelError(f"node '{label}' ({self.op}): sequence_lens {lens.tolist()} "
                                 f"must hold {self.N} lengths in 0..{self.S}")
            self.lens_const = lens

    def _activations(self, a, D, refuse) -> list[tuple[str, float, float]]:
        names = [_text(s) for s in a.get("activations", [])] or list(
            DEFAULT_ACTIVATIONS[self.op]) * D
        per = len(DEFAULT_ACTIVATIONS[self.op])
        if len(names) != per * D:
            raise refuse(f"{len(names)} activations given, {per * D} expected")
        alphas = list(a.get("activation_alpha", []))
        betas = list(a.get("activation_beta", []))
        out = []
        for name in names:
            kind = _LOWER.get(name.lower())
            if kind is None:
                raise refuse(f"activation '{name}' is not one of the ONNX spec's")
            uses_a, uses_b, da, db = ACTIVATIONS[kind]
            alpha = alphas.pop(0) if uses_a and alphas else da
            beta = betas.pop(0) if uses_b and betas else db
            out.append((kind, alpha, beta))
        return out


def _masks(e: _Emitter, p: _Node) -> list[str] | None:
    """Per step, a (batch, 1) tensor: 1 while the step is within the entry's length."""
    if not p.lens:
        return None
    if p.lens_const is not None:
        if np.all(p.lens_const == p.S):
            return None
        return [e.const((t < p.lens_const).reshape(p.N, 1), "mask") for t in range(p.S)]
    lens = e.reshape(e.op("Cast", [p.lens], to=_elem(e.dtype)), (p.N, 1))
    return [e.op("Cast", [e.op("Less", [e.const(np.full((1, 1), t)), lens])], to=_elem(e.dtype))
            for t in range(p.S)]


def _initial(e: _Emitter, p: _Node, name: str, d: int) -> str:
    if not name:
        return e.const(np.zeros((p.N, p.H)), "zeros")
    value = p.static(name)
    if value is not None and value.shape in ((len(p.dirs), p.N, p.H), (p.N, len(p.dirs), p.H)):
        return e.const(value[d] if p.layout == 0 else value[:, d], "state")
    return e.take(name, 1 if p.layout == 1 else 0, d, (p.N, p.H))  # layout 1: (N, dirs, H)


def _masked(e: _Emitter, mask: str | None, new: str, old: str) -> str:
    if mask is None:
        return new
    return e.op("Add", [old, e.op("Mul", [mask, e.op("Sub", [new, old])])])


def _pre(e: _Emitter, p: _Node, x: str) -> str:
    return e.clip(x, p.clip) if p.clip is not None else x


def _direction(e: _Emitter, p: _Node, X: str, d: int, masks) -> tuple[list[str], str, str | None]:
    """Unroll one direction: (h of each step in time order, final h, final c)."""
    H, n = p.H, GATES[p.op]
    W, R, B = p.W[d], p.R[d], p.B[d]
    wb, rb = B[:n * H].astype(np.float64), B[n * H:].astype(np.float64)
    acts = p.acts[d * len(DEFAULT_ACTIVATIONS[p.op]):(d + 1) * len(DEFAULT_ACTIVATIONS[p.op])]
    if p.op == "GRU":  # the reset gate's recurrent bias may have to stay behind the reset
        bias = wb + np.concatenate([rb[:2 * H], rb[2 * H:] * (p.linear_before_reset == 0)])
    else:
        bias = wb + rb
    xw = e.op("Add", [e.op("MatMul", [X, e.const(W.T, "W")]), e.const(bias, "bias")])
    h = _initial(e, p, p.h0, d)
    c = _initial(e, p, p.c0, d) if p.op == "LSTM" else None
    steps = range(p.S) if p.dirs[d] == "forward" else range(p.S - 1, -1, -1)
    ys: dict[int, str] = {}
    if p.op == "GRU" and not p.linear_before_reset:
        r_zr, r_h = e.const(R[:2 * H].T, "R_zr"), e.const(R[2 * H:].T, "R_h")
    else:
        r_all = e.const(R.T, "R")
    for t in steps:
        x_t = e.take(xw, 0, t, (p.N, n * H))
        mask = masks[t] if masks else None
        if p.op == "LSTM":
            g = e.op("Add", [x_t, e.op("MatMul", [h, r_all])])
            gi, go, gf, gc = (e.slice(g, 1, k * H, (k + 1) * H) for k in range(4))
            if p.P is not None:
                pi, po, pf = (e.const(p.P[d][k * H:(k + 1) * H], "P") for k in range(3))
                gi = e.op("Add", [gi, e.op("Mul", [pi, c])])
                gf = e.op("Add", [gf, e.op("Mul", [pf, c])])
            i = e.activation(_pre(e, p, gi), acts[0])
            f = e.activation(_pre(e, p, gf), acts[0])
            cand = e.activation(_pre(e, p, gc), acts[1])
            c_new = e.op("Add", [e.op("Mul", [f, c]), e.op("Mul", [i, cand])])
            if p.P is not None:
                go = e.op("Add", [go, e.op("Mul", [po, c_new])])
            o = e.activation(_pre(e, p, go), acts[0])
            h_new = e.op("Mul", [o, e.activation(c_new, acts[2])])
            c = _masked(e, mask, c_new, c)
        elif p.op == "GRU":
            xz, xr, xh = (e.slice(x_t, 1, k * H, (k + 1) * H) for k in range(3))
            if p.linear_before_reset:
                # Rbz, Rbr are in xw; Rbh stays inside the reset product
                rbh = np.concatenate([np.zeros(2 * H), rb[2 * H:]])
                hr = e.op("Add", [e.op("MatMul", [h, r_all]), e.const(rbh, "Rb")])
                hz, hrr, hh = (e.slice(hr, 1, k * H, (k + 1) * H) for k in range(3))
            else:
                hzr = e.op("MatMul", [h, r_zr])
                hz, hrr = (e.slice(hzr, 1, k * H, (k + 1) * H) for k in range(2))
            z = e.activation(_pre(e, p, e.op("Add", [xz, hz])), acts[0])
            r = e.activation(_pre(e, p, e.op("Add", [xr, hrr])), acts[0])
            if p.linear_before_reset:
                rec = e.op("Mul", [r, hh])
            else:
                rec = e.op("MatMul", [e.op("Mul", [r, h]), r_h])
            cand = e.activation(_pre(e, p, e.op("Add", [xh, rec])), acts[1])
            # (1 - z) * cand + z * h
            h_new = e.op("Add", [cand, e.op("Mul", [z, e.op("Sub", [h, cand])])])
        else:  # RNN
            g = e.op("Add", [x_t, e.op("MatMul", [h, r_all])])
            h_new = e.activation(_pre(e, p, g), acts[0])
        ys[t] = e.op("Mul", [mask, h_new]) if mask is not None else h_new
        h = _masked(e, mask, h_new, h)
    return [ys[t] for t in range(p.S)], h, c


def _unroll(model, node, label, consts, shapes, opset, taken, target,
            static) -> list[onnx.NodeProto]:
    p = _Node(model, node, consts, shapes, label, target, static)
    dtype = p.W.dtype if np.issubdtype(p.W.dtype, np.floating) else np.dtype(np.float32)
    e = _Emitter(model, f"{label}/unrolled", dtype, opset, taken)
    X = e.op("Transpose", [p.x], perm=[1, 0, 2]) if p.layout == 1 else p.x
    masks = _masks(e, p)
    results = [_direction(e, p, X, d, masks) for d in range(len(p.dirs))]
    outs = list(node.output) + [""] * (3 - len(node.output))
    N, H, S, D = p.N, p.H, p.S, len(p.dirs)

    def emit(final: str, parts: list[str], shape, perm) -> None:
        """Concat ``parts`` (each reshaped to ``shape``) on axis 0 or 1, then lay out."""
        pieces = [e.reshape(x, shape) for x in parts]
        axis = 0 if len(shape) == 3 else 1
        joined = pieces[0] if len(pieces) == 1 else e.op("Concat", pieces, axis=axis)
        if p.layout == 1:
            e.op("Transpose", [joined], final, perm=perm)
        else:
            e.op("Identity", [joined], final)

    if outs[0]:
        per_dir = []
        for ys, _, _ in results:
            seq = e.op("Concat", [e.reshape(y, (1, N, H)) for y in ys], axis=0) if S > 1 \
                else e.reshape(ys[0], (1, N, H))
            per_dir.append(seq)
        emit(outs[0], per_dir, (S, 1, N, H), [2, 0, 1, 3])
    if outs[1]:
        emit(outs[1], [h for _, h, _ in results], (1, N, H), [1, 0, 2])
    if len(outs) > 2 and outs[2] and p.op == "LSTM":
        emit(outs[2], [c for _, _, c in results], (1, N, H), [1, 0, 2])
    log.debug("unrolled %s '%s': %d steps x %d direction(s) -> %d nodes", p.op, label, S, D,
              len(e.nodes))
    return e.nodes


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop nodes nothing reads any more (the shape chains of initial states folded above)."""
    keep = list(nodes)
    while True:
        read = outputs | {i for n in keep for i in n.input}
        for n in keep:  # subgraphs may read outer names
            for a in n.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    read |= {i for sub in g.node for i in sub.input}
        live = [n for n in keep if any(o in read for o in n.output if o)]
        if len(live) == len(keep):
            return keep
        keep = live


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class UnrollRecurrent(Pass):
    """``target`` only names the target in refusals."""

    def __init__(self, target: str = "cpu"):
        self.target = target

    def apply(self, model):
        if not any(n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx")
                   for n in model.graph.node):
            return model, False
        model = onnx.ModelProto.FromString(model.SerializeToString())
        shapes = _shapes(model)
        if any(n.op_type in RECURRENT_OPS and (n.input[0] not in shapes or -1 in shapes[n.input[0]])
               for n in model.graph.node):
            try:
                shapes = _shapes(onnx.shape_inference.infer_shapes(model, data_prop=True))
            except Exception:  # noqa: BLE001  (the refusal below names the node)
                pass
        consts = _constants(model)
        taken = ({t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
                 | {o for n in model.graph.node for o in n.output} | {n.name for n in model.graph.node})
        opset = _default_opset(model)
        static = _ShapeValues(model, consts, shapes)
        nodes = []
        for idx, node in enumerate(model.graph.node):
            if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx"):
                nodes.extend(_unroll(model, node, node.name or f"#{idx}", consts, shapes, opset,
                                     taken, self.target, static))
            else:
                nodes.append(node)
        del model.graph.node[:]
        model.graph.node.extend(_live(nodes, {o.name for o in model.graph.output}))
        remove_unused_initializers(model)
        return model, True
