"""Small read-only helpers over an ONNX graph (plain functions, no state)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def graph_output_names(model: onnx.ModelProto) -> set[str]:
    return {o.name for o in model.graph.output}


def const_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None



def set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Add or replace an initializer (old-IR models also list it as a graph input)."""
    tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(tensor)
            return
    model.graph.initializer.append(tensor)
    if model.ir_version < 4:
        model.graph.input.append(onnx.helper.make_tensor_value_info(
            name, tensor.data_type, list(tensor.dims)))


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    """Drop initializers nothing reads (and their graph-input entries in old-IR models)."""
    used = {n for node in model.graph.node for n in node.input} | graph_output_names(model)
    dropped = {t.name for t in model.graph.initializer if t.name not in used}
    if not dropped:
        return
    keep = [t for t in model.graph.initializer if t.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    ins = [i for i in model.graph.input if i.name not in dropped]
    del model.graph.input[:]
    model.graph.input.extend(ins)


def unique_name(model: onnx.ModelProto, base: str) -> str:
    taken = ({t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
             | {o for n in model.graph.node for o in n.output})
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name
