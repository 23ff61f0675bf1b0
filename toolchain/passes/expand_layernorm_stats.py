"""ExpandLayerNormStats: a LayerNormalization whose Mean or InvStdDev output is read becomes
the explicit ops of its definition.

Before: ``LayerNormalization(X, Scale[, B]) -> (Y, Mean, InvStdDev)`` with Mean or InvStdDev
read by a node or the graph (TVM's importer computes Y only and returns zeros for the other
two). After, with ``axes`` the axes from ``axis`` to the last:
``Mean = ReduceMean(X, axes)``, ``D = X - Mean``, ``InvStdDev = 1 / Sqrt(ReduceMean(D*D, axes)
+ epsilon)``, ``Y = D * InvStdDev * Scale (+ B)``, each keeping its name. A float16 X is cast to
float32 first and each output cast back (stash_type 1), as onnx's reference does. A node whose
X has an unknown rank or a non-float type, or with stash_type other than 1, is left alone (the
frontend refuses it). A LayerNormalization whose extra outputs nobody reads is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from toolchain.passes.expand import ExpandNodes, NodeWriter
from toolchain.passes.graph import attribute, default_opset, set_initializer

_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
           TensorProto.FLOAT16: np.float16}


def _read(model: onnx.ModelProto) -> set[str]:
    return ({n for node in model.graph.node for n in node.input}
            | {o.name for o in model.graph.output})


def _wanted(node: onnx.NodeProto, read: set[str]) -> bool:
    return (node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx")
            and any(name and name in read for name in node.output[1:]))


class ExpandLayerNormStats(ExpandNodes):
    def select(self, model):
        read = _read(model)
        return lambda node: _wanted(node, read)

    def expand(self, model, node, types, fresh):
        elem, dims = types.get(node.input[0], (0, None))
        if elem not in _FLOATS or dims is None or int(attribute(node, "stash_type", 1)) != 1:
            return None
        return self._expand(model, node, types, len(dims), default_opset(model), fresh)

    @staticmethod
    def _expand(model, node, types, rank, opset, fresh) -> list[onnx.NodeProto]:
        elem = types[node.input[0]][0]
        axis = int(attribute(node, "axis", -1))
        axis = axis + rank if axis < 0 else axis
        axes = list(range(axis, rank))
        base = node.name or node.output[0]
        compute = TensorProto.FLOAT if elem == TensorProto.FLOAT16 else elem
        outs = list(node.output) + [""] * (3 - len(node.output))
        add = NodeWriter(node, fresh)
        new = add.nodes

        def cast_in(name):
            return add("Cast", [name], to=compute) if compute != elem else name

        def emit(value, name):
            """Output ``name`` is ``value``, cast to the type the graph gives ``name`` (the
            input's type when not given)."""
            if not name:
                return
            want = types.get(name, (elem, None))[0] or elem
            if want != compute:
                add("Cast", [value], name, to=want)
            else:
                add("Identity", [value], name)

        def mean(x):
            if opset >= 18:
                axes_name = fresh(f"{base}_axes")
                set_initializer(model, axes_name, np.array(axes, np.int64))
                return add("ReduceMean", [x, axes_name], keepdims=1)
            return add("ReduceMean", [x], axes=axes, keepdims=1)

        eps = fresh(f"{base}_epsilon")
        set_initializer(model, eps, np.array(float(attribute(node, "epsilon", 1e-5)),
                                             _FLOATS[compute]))
        x = cast_in(node.input[0])
        mu = mean(x)
        diff = add("Sub", [x, mu])
        var = mean(add("Mul", [diff, diff]))
        inv = add("Reciprocal", [add("Sqrt", [add("Add", [var, eps])])])
        y = add("Mul", [add("Mul", [diff, inv]), cast_in(node.input[1])])
        if len(node.input) > 2 and node.input[2]:
            y = add("Add", [y, cast_in(node.input[2])])
        for value, name in ((y, outs[0]), (mu, outs[1]), (inv, outs[2])):
            emit(value, name)
        return new
