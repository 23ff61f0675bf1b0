"""FoldConstants: evaluate nodes whose inputs are all constants, with numpy.

Before: nodes such as Constant, Shape-free arithmetic on initializers, ConstantOfShape with a
constant shape, Reshape of a weight. After: each becomes an initializer; the graph computes
the same outputs. Evaluation uses onnx's reference evaluator, one node at a time, and skips
nodes whose result would be large (over 64 MiB) or that the evaluator cannot run.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.errors import ModelError
from toolchain.passes import Pass
from toolchain.passes.graph import graph_output_names, remove_unused_initializers, set_initializer

log = logging.getLogger(__name__)

_MAX_BYTES = 64 << 20
# DequantizeLinear stays: folded, a quantized weight would become a float copy (the onnx
# reference evaluator has DequantizeLinear from opset 19, so QDQ files of opset >= 19 lost
# their int8/int4 weights here); the Relax passes take the quantized weights from it.
_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
          "Bernoulli", "If", "Loop", "Scan", "DequantizeLinear"}


def _to_array(t: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError) as exc:  # e.g. raw data that does not fit the dims
        raise ModelError(f"initializer '{t.name}' does not match its dims {list(t.dims)} and "
                         f"data type: {exc}") from None


class FoldConstants(Pass):
    def apply(self, model):
        from onnx.reference import ReferenceEvaluator

        model = onnx.ModelProto.FromString(model.SerializeToString())
        consts = {t.name: _to_array(t) for t in model.graph.initializer}
        outputs = graph_output_names(model)
        opsets = list(model.opset_import)
        keep, changed = [], False
        for node in model.graph.node:
            foldable = (node.op_type not in _NEVER and node.domain in ("", "ai.onnx")
                        and all(i == "" or i in consts for i in node.input)
                        and not any(o in outputs for o in node.output))
            if foldable:
                try:
                    sess = ReferenceEvaluator(helper.make_model(
                        helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(
                            o, onnx.TensorProto.UNDEFINED, None) for o in node.output]),
                        opset_imports=opsets, ir_version=model.ir_version))
                    feeds = {i: consts[i] for i in node.input if i}
                    results = sess.run(None, feeds)
                    if sum(np.asarray(r).nbytes for r in results) > _MAX_BYTES:
                        raise ValueError("too large")
                except Exception as exc:  # noqa: BLE001  (leave the node for TVM)
                    log.debug("not folding %s (%s): %s", node.name, node.op_type, exc)
                    keep.append(node)
                    continue
                for name, value in zip(node.output, results):
                    value = np.asarray(value)
                    consts[name] = value
                    set_initializer(model, name, value)
                changed = True
            else:
                keep.append(node)
        if changed:
            del model.graph.node[:]
            model.graph.node.extend(keep)
            remove_unused_initializers(model)
        return model, changed
