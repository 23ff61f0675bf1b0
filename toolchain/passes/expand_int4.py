"""int4 and blocked-int8 DequantizeLinear weights as int8 forms TVM's ONNX importer takes.

TVM's importer takes neither ``INT4`` tensors nor blocked DequantizeLinear. An int4 weight becomes
an int8 container with the same values, and a blocked dequantize (int4, or int8 with a group
size) an equivalent per-axis one on a ``[K/G * N, G]`` view followed by Reshape/Transpose/Reshape
back to ``[K, N]``, which TVM imports unchanged and computes right. It runs at every Relax import
(``toolchain.optimizer.frontend.import_onnx``); the CPU backend's weight-only kernels
(``toolchain.targets.cpu.weight_only``) then keep such weights int8 / int4 in the binary.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.passes import Pass
from toolchain.passes.graph import unique_name

_INT4 = (onnx.TensorProto.INT4,)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class ExpandInt4Weights(Pass):
    """int4 and blocked DequantizeLinear weights -> int8 forms TVM imports (module doc).

    Before: ``DequantizeLinear(Wq INT4 initializer, scale[, zero])``, per axis or blocked, or
    a blocked one of an INT8 initializer (int8 with a group size).
    After: the same values as an INT8 initializer; a blocked one (2-D, axis 0, block size
    dividing K) as a per-axis dequantize of a ``[K/G * N, G]`` view, reshaped back. Anything
    else is left as it was (and refused by the dtype check).
    """

    def apply(self, model):
        g = model.graph
        inits = {t.name: t for t in g.initializer}
        used = {}
        for node in g.node:
            for i in node.input:
                used[i] = used.get(i, 0) + 1
        changed = False
        new_nodes = []
        for node in g.node:
            w = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" and node.input else None
            blocked = int(_attr(node, "block_size", 0) or 0) if w is not None else 0
            if w is None or used.get(w.name, 0) != 1 or not (
                    w.data_type in _INT4 or (w.data_type == onnx.TensorProto.INT8 and blocked)):
                new_nodes.append(node)
                continue
            zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if zero is not None and np.any(numpy_helper.to_array(zero).astype(np.int8) != 0):
                new_nodes.append(node)
                continue
            scale = inits.get(node.input[1])
            q = numpy_helper.to_array(w).astype(np.int8)
            block = int(_attr(node, "block_size", 0) or 0)
            axis = int(_attr(node, "axis", 1))
            if block == 0:
                _replace_init(g, w.name, numpy_helper.from_array(q, w.name))
                kept = onnx.NodeProto()
                kept.CopyFrom(node)
                if zero is not None:
                    del kept.input[2:]
                new_nodes.append(kept)
                changed = True
                continue
            if scale is None or q.ndim != 2 or axis % 2 != 0 or q.shape[0] % block:
                new_nodes.append(node)
                continue
            s = numpy_helper.to_array(scale)
            k, n = q.shape
            if s.shape != (k // block, n):
                new_nodes.append(node)
                continue
            new_nodes.extend(_blocked_as_per_axis(model, node, w.name, scale.name, q, s, block))
            changed = True
        if changed:
            del g.node[:]
            g.node.extend(new_nodes)
        return model, changed


def _replace_init(g, name: str, tensor) -> None:
    for i, t in enumerate(g.initializer):
        if t.name == name:
            g.initializer[i].CopyFrom(tensor)
            return


def _blocked_as_per_axis(model, node, w_name, s_name, q, s, block):
    """Nodes computing ``node``'s output from a per-axis dequantize of ``[K/G * N, G]``."""
    g = model.graph
    k, n = q.shape
    kb = k // block
    view = np.ascontiguousarray(q.reshape(kb, block, n).transpose(0, 2, 1).reshape(kb * n, block))
    _replace_init(g, w_name, numpy_helper.from_array(view, w_name))
    _replace_init(g, s_name, numpy_helper.from_array(
        np.ascontiguousarray(s.astype(np.float32).reshape(-1)), s_name))
    names = [unique_name(model, f"{w_name}_wo_{tag}") for tag in ("dq", "r1", "tr", "sh1", "sh2")]
    g.initializer.extend([numpy_helper.from_array(np.array([kb, n, block], np.int64), names[3]),
                          numpy_helper.from_array(np.array([k, n], np.int64), names[4])])
    return [helper.make_node("DequantizeLinear", [w_name, s_name], [names[0]], axis=0),
            helper.make_node("Reshape", [names[0], names[3]], [names[1]]),
            helper.make_node("Transpose", [names[1]], [names[2]], perm=[0, 2, 1]),
            helper.make_node("Reshape", [names[2], names[4]], [node.output[0]])]
