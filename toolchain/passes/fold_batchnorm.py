"""FoldBatchNorm: inference-mode batch normalization into the convolution before it.

Before: ``Conv -> BatchNormalization`` (the conv's output used only by the BN), or a BN on
its own (pre-activation nets such as DenseNet). After: the conv's weights and bias carry the
BN's scale and shift; a BN on its own becomes ``Mul`` and ``Add`` with per-channel constants.
Both keep the outputs equal up to float rounding. A training-mode BN (ExpandBatchNormTraining
expands it first) is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from toolchain.passes import Pass
from toolchain.passes.expand_batchnorm_training import is_training_batchnorm
from toolchain.passes.graph import (const_value, consumers, graph_output_names,
                                    remove_unused_initializers, set_initializer, unique_name)


def _bn_affine(model, bn) -> tuple[np.ndarray, np.ndarray] | None:
    if is_training_batchnorm(model, bn):  # normalizes with the batch's statistics
        return None
    vals = [const_value(model, n) for n in bn.input[1:5]]
    if any(v is None for v in vals) or len(bn.output) != 1:
        return None
    gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


class FoldBatchNorm(Pass):
    def apply(self, model):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        users = consumers(model)
        producer = {o: n for n in model.graph.node for o in n.output}
        outputs = graph_output_names(model)
        changed = False
        for bn in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
            affine = _bn_affine(model, bn)
            if affine is None:
                continue
            scale, shift = affine
            conv = producer.get(bn.input[0])
            w = const_value(model, conv.input[1]) if conv is not None and conv.op_type == "Conv" else None
            if (w is not None and len(users.get(bn.input[0], [])) == 1
                    and bn.input[0] not in outputs and w.shape[0] == scale.shape[0]
                    and len(users.get(conv.input[1], [])) == 1):
                b = const_value(model, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
                b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
                new_w = (w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1))))
                set_initializer(model, conv.input[1], new_w.astype(w.dtype))
                bias_name = (conv.input[2] if len(conv.input) > 2 and conv.input[2]
                             and len(users.get(conv.input[2], [])) == 1
                             else unique_name(model, conv.name + "_folded_bias"))
                set_initializer(model, bias_name, (b * scale + shift).astype(w.dtype))
                if len(conv.input) > 2:
                    conv.input[2] = bias_name
                else:
                    conv.input.append(bias_name)
                conv.output[0] = bn.output[0]
                model.graph.node.remove(bn)
            else:
                rank = _rank(model, bn.input[0])
                if rank is None:
                    continue
                shape = (-1,) + (1,) * (rank - 2)
                s_name = unique_name(model, (bn.name or "bn") + "_scale")
                set_initializer(model, s_name, scale.reshape(shape).astype(np.float32))
                t_name = unique_name(model, (bn.name or "bn") + "_shift")
                set_initializer(model, t_name, shift.reshape(shape).astype(np.float32))
                mid = unique_name(model, bn.output[0] + "_scaled")
                idx = list(model.graph.node).index(bn)
                mul = helper.make_node("Mul", [bn.input[0], s_name], [mid], name=f"{bn.name}_mul")
                add = helper.make_node("Add", [mid, t_name], [bn.output[0]], name=f"{bn.name}_add")
                model.graph.node.remove(bn)
                model.graph.node.insert(idx, add)
                model.graph.node.insert(idx, mul)
            changed = True
        if changed:
            remove_unused_initializers(model)
        return model, changed


def _rank(model, name: str) -> int | None:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None
