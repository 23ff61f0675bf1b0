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


def tensor_types(model: onnx.ModelProto) -> dict[str, tuple[int, list[int | None]]]:
    """(element type, dims) of every tensor whose type is known, a dim None when not static.
    Shape inference runs first on a copy, so a model without value infos gets them."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an invalid model: its own value infos are all there is
        inferred = model
    g = inferred.graph
    found: dict[str, tuple[int, list[int | None]]] = {}
    for v in [*g.input, *g.value_info, *g.output]:
        t = v.type.tensor_type
        if not v.type.HasField("tensor_type") or not t.HasField("shape"):
            continue
        found[v.name] = (t.elem_type, [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                                       else None for d in t.shape.dim])
    found.update({t.name: (t.data_type, list(t.dims)) for t in g.initializer})
    return found


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def attribute(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value (strings decoded), or ``default`` when the node lacks it."""
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


class Names:
    """Fresh tensor names for nodes a pass is about to add (checked against the model and
    against each other)."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.taken = model, set()

    def __call__(self, base: str) -> str:
        name, k = unique_name(self.model, base), 0
        while name in self.taken:
            k += 1
            name = unique_name(self.model, f"{base}_{k}")
        self.taken.add(name)
        return name
