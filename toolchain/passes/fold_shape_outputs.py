"""FoldShapeOutputs: a graph output computed by ``Shape`` of a static tensor is a constant.

Before: ``Shape(x[, start, end]) -> y`` with ``y`` a graph output and x's shape fully known
(TVM's importer gives a ShapeExpr there, which a static plan cannot return as a tensor).
After: ``Constant(value=int64 x.shape[start:end]) -> y`` (negative and out-of-range bounds
clamped as ONNX and Python slicing do). Shapes read by other nodes are left to the importer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.passes import Pass
from toolchain.passes.graph import attribute, graph_output_names, tensor_types


class FoldShapeOutputs(Pass):
    def apply(self, model):
        outputs = graph_output_names(model)
        if not any(n.op_type == "Shape" and n.output[0] in outputs for n in model.graph.node):
            return model, False
        model = onnx.ModelProto.FromString(model.SerializeToString())
        types = tensor_types(model)
        changed = False
        for i, node in enumerate(model.graph.node):
            if (node.op_type != "Shape" or node.domain not in ("", "ai.onnx")
                    or node.output[0] not in outputs):
                continue
            dims = types.get(node.input[0], (0, None))[1]
            if dims is None or not all(d is not None for d in dims):
                continue
            start, end = int(attribute(node, "start", 0)), attribute(node, "end", None)
            value = np.array(dims[start:None if end is None else int(end)], np.int64)
            model.graph.node[i].CopyFrom(helper.make_node(
                "Constant", [], [node.output[0]], name=node.name or node.output[0],
                value=numpy_helper.from_array(value, node.output[0])))
            changed = True
        return model, changed
