"""RemoveDropout: inference-mode Dropout is the identity; take it out of the graph.

Before: ``Dropout`` of any opset, its ratio an attribute (opset < 12) or an input (opset >= 12,
which onnx's version converter writes and TVM's importer cannot read when it is a tensor),
``training_mode`` absent or a constant false, or the ratio a constant 0 (no element is
dropped in training mode either). After: the Dropout's readers read its input; a Dropout
whose output is a graph output becomes an ``Identity`` so that the name stays; a mask output
that is read becomes ``ConstantOfShape(Shape(x), true)`` (nothing dropped; TVM's importer
gives the mask a float type). A Dropout that may run in training mode with a non-zero ratio
is left alone (its drops are random; the frontend refuses it). Outputs are unchanged (the old
``is_test`` attribute of opset < 7 is ignored: edgec only infers).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.passes import Pass
from toolchain.passes.graph import (consumers, graph_output_names, remove_unused_initializers,
                                    unique_name)


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of ``name`` if it is an initializer or the output of a Constant node."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return numpy_helper.to_array(value.t) if value is not None else None
    return None


def _inference_only(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    if len(node.input) < 3 or not node.input[2]:
        return True  # training_mode absent: false
    flag = _constant(model, node.input[2])
    return flag is not None and flag.size == 1 and not bool(flag.reshape(()))


def _drops_nothing(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """The ratio is a constant 0 (an input from opset 12; before, an attribute, default 0.5)."""
    if len(node.input) > 1 and node.input[1]:
        ratio = _constant(model, node.input[1])
    else:
        ratio = next((np.array(a.f) for a in node.attribute if a.name == "ratio"), None)
        if ratio is None and len(node.input) < 2:
            ratio = np.array(0.5)
    return ratio is not None and ratio.size == 1 and float(ratio.reshape(())) == 0.0


def _keep_all_mask(model: onnx.ModelProto, x: str, mask: str, name: str) -> list[onnx.NodeProto]:
    shape = unique_name(model, f"{mask}_shape")
    return [helper.make_node("Shape", [x], [shape], name=f"{name}/mask_shape"),
            helper.make_node("ConstantOfShape", [shape], [mask], name=f"{name}/mask",
                             value=numpy_helper.from_array(np.array([True])))]


def _rename_inputs(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Point every reader (subgraphs too: they may read outer names) at the new names."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            while name in renames:
                name = renames[name]
            node.input[i] = name
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _rename_inputs(sub, renames)


class RemoveDropout(Pass):
    def apply(self, model):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        users = consumers(model)
        outputs = graph_output_names(model)
        nodes, renames, gone, changed = [], {}, set(), False
        for node in model.graph.node:
            mask = node.output[1] if len(node.output) > 1 else ""
            if (node.op_type != "Dropout" or node.domain not in ("", "ai.onnx")
                    or not (_inference_only(model, node) or _drops_nothing(model, node))):
                nodes.append(node)
                continue
            x, y = node.input[0], node.output[0]
            if mask and (mask in users or mask in outputs):
                nodes += _keep_all_mask(model, x, mask, node.name or y)
            else:
                gone.add(mask)
            changed = True
            if y in outputs:  # keep the output's name
                nodes.append(helper.make_node("Identity", [x], [y], name=node.name or y))
            else:
                renames[y] = x
                gone.add(y)
        if not changed:
            return model, False
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        _rename_inputs(model.graph, renames)
        kept = [v for v in model.graph.value_info if v.name not in gone]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
        remove_unused_initializers(model)
        return model, True
