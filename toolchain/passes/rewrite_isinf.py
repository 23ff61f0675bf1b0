"""RewriteSignedIsInf: an IsInf that detects one sign only becomes an Equal with that infinity.

Before: ``IsInf(x)`` with ``detect_positive=0`` or ``detect_negative=0`` (TVM's importer
ignores both attributes and detects either sign). After: ``Equal(x, +inf)`` or
``Equal(x, -inf)`` with the infinity a scalar initializer of x's type; the output keeps its
name. An IsInf that detects neither sign, or whose input type is unknown, is left alone (the
frontend refuses the first).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from toolchain.passes import Pass
from toolchain.passes.graph import set_initializer, unique_name

_FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
                onnx.TensorProto.FLOAT16: np.float16}


def _flag(node: onnx.NodeProto, name: str) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), 1)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]
             if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


class RewriteSignedIsInf(Pass):
    def apply(self, model):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        types = _elem_types(model)
        changed = False
        for i, node in enumerate(model.graph.node):
            if node.op_type != "IsInf" or node.domain not in ("", "ai.onnx"):
                continue
            pos, neg = _flag(node, "detect_positive"), _flag(node, "detect_negative")
            dtype = _FLOAT_TYPES.get(types.get(node.input[0], 0))
            if pos == neg or dtype is None:
                continue
            inf = unique_name(model, f"{node.input[0]}_{'pos' if pos else 'neg'}_inf")
            set_initializer(model, inf, np.array(np.inf if pos else -np.inf, dtype=dtype))
            model.graph.node[i].CopyFrom(helper.make_node(
                "Equal", [node.input[0], inf], list(node.output), name=node.name))
            changed = True
        return model, changed
