"""ExpandBatchNormTraining: a training-mode BatchNormalization becomes the ops of its definition.

Before: ``BatchNormalization(X, scale, B, input_mean, input_var, training_mode=1)`` (opset
14 and later) -> ``Y[, running_mean, running_var]``: Y is normalized with the batch's own
statistics (TVM's importer, and FoldBatchNorm, would use the stored mean and variance).
After, with ``axes`` every axis but 1:
``m = ReduceMean(X, axes)``, ``D = X - m``, ``v = ReduceMean(D*D, axes)`` (biased, as onnx's
reference), ``Y = scale * D / Sqrt(v + epsilon) + B`` (per-channel constants reshaped to
(C, 1, ...)), ``running_mean = input_mean * momentum + m * (1 - momentum)``, the same for
``running_var`` with v; each output keeps its name. Only float32 and double with one type
for every input are rewritten; any other training-mode node is left for the frontend to refuse.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from toolchain.passes.expand import ExpandNodes, NodeWriter
from toolchain.passes.graph import attribute, default_opset, set_initializer

_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}


def is_training_batchnorm(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    return (node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx")
            and default_opset(model) >= 14 and int(attribute(node, "training_mode", 0)) == 1)


class ExpandBatchNormTraining(ExpandNodes):
    def select(self, model):
        return lambda node: is_training_batchnorm(model, node)

    def expand(self, model, node, types, fresh):
        elems = {types.get(name, (0, None))[0] for name in node.input[:5]}
        dims = types.get(node.input[0], (0, None))[1]
        if (len(node.input) < 5 or len(elems) != 1 or not elems <= set(_FLOATS) or dims is None
                or len(dims) < 2):
            return None
        return self._expand(model, node, _FLOATS[elems.pop()], len(dims), default_opset(model),
                            fresh)

    @staticmethod
    def _expand(model, node, dtype, rank, opset, fresh) -> list[onnx.NodeProto]:
        x, scale, bias, mean_in, var_in = node.input[:5]
        base = node.name or node.output[0]
        outs = list(node.output) + [""] * (3 - len(node.output))
        axes = [0, *range(2, rank)]
        add = NodeWriter(node, fresh)
        new = add.nodes

        def const(tag, value, kind=dtype):
            name = fresh(f"{base}_{tag}")
            set_initializer(model, name, np.asarray(value, kind))
            return name

        def mean(v):
            if opset >= 18:
                return add("ReduceMean", [v, const("axes", axes, np.int64)], keepdims=1)
            return add("ReduceMean", [v], axes=axes, keepdims=1)

        per_channel = const("per_channel", [-1] + [1] * (rank - 2), np.int64)
        flat = const("flat", [-1], np.int64)
        m = mean(x)
        d = add("Sub", [x, m])
        v = mean(add("Mul", [d, d]))
        std = add("Sqrt", [add("Add", [v, const("epsilon", attribute(node, "epsilon", 1e-5))])])
        scaled = add("Mul", [add("Reshape", [scale, per_channel]), d])
        add("Add", [add("Div", [scaled, std]), add("Reshape", [bias, per_channel])], outs[0])
        momentum = float(attribute(node, "momentum", 0.9))
        for stat, stored, out in ((m, mean_in, outs[1]), (v, var_in, outs[2])):
            if out:
                add("Add", [add("Mul", [stored, const("momentum", momentum)]),
                            add("Mul", [add("Reshape", [stat, flat]),
                                        const("one_minus_momentum", 1 - momentum)])], out)
        return new
