"""ChannelPReluSlope: an opset < 7 PRelu's 1-D slope is per channel (axis 1); say so.

Before: ``PRelu(x, slope)`` in a model whose default opset is below 7, ``slope`` a constant
of shape (C,) with C > 1 and x of rank >= 3 with C channels on axis 1 (PyTorch's
multi-parameter ``nn.PReLU`` as exported then). From opset 7 a slope broadcasts from the
right, which TVM's importer applies to every opset: it put the C slopes on the last axis and
failed. After: the slope is a new constant of shape (C, 1, ..., 1), which broadcasts from
the right onto axis 1 as the old opsets meant. Other PRelu nodes are left alone.
"""

from __future__ import annotations

import onnx

from toolchain.passes import Pass
from toolchain.passes.graph import const_value, remove_unused_initializers, set_initializer, unique_name


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _rank_and_channels(model: onnx.ModelProto, name: str) -> tuple[int, int] | None:
    g = model.graph
    for v in [*g.input, *g.value_info, *g.output]:
        if v.name == name and v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            return len(dims), (dims[1].dim_value if len(dims) > 1 else 0)
    return None


class ChannelPReluSlope(Pass):
    def apply(self, model):
        if _default_opset(model) >= 7:
            return model, False
        model = onnx.ModelProto.FromString(model.SerializeToString())
        changed = False
        for node in model.graph.node:
            if node.op_type != "PRelu" or len(node.input) < 2:
                continue
            slope = const_value(model, node.input[1])
            shape = _rank_and_channels(model, node.input[0])
            if slope is None or shape is None or slope.ndim != 1 or slope.size <= 1:
                continue
            rank, channels = shape
            if rank < 3 or channels != slope.size:
                continue
            name = unique_name(model, f"{node.input[1]}_per_channel")
            set_initializer(model, name, slope.reshape((slope.size,) + (1,) * (rank - 2)))
            node.input[1] = name
            changed = True
        if changed:
            remove_unused_initializers(model)
        return model, changed
