"""ExpandSpaceToDepthCRD: a CRD-mode SpaceToDepth becomes Reshape -> Transpose -> Reshape.

Before: ``SpaceToDepth(x, blocksize=b, mode="CRD")`` (opset 28 added the mode; TVM's importer
ignores it and computes DCR, which orders the output channels differently). After, with x of static shape
(N, C, H, W): ``Reshape(N, C, H/b, b, W/b, b) -> Transpose(0, 1, 3, 5, 2, 4) ->
Reshape(N, C*b*b, H/b, W/b)``, so output channel ``c*b*b + i*b + j`` holds
``x[:, c, h*b + i, w*b + j]``; the output keeps its name. A CRD node whose input shape is not
static, or not divisible by b, is left alone (the frontend refuses it). DCR nodes are left
alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from toolchain.passes.expand import ExpandNodes
from toolchain.passes.graph import attribute, set_initializer


def _is_crd(node: onnx.NodeProto) -> bool:
    return (node.op_type == "SpaceToDepth" and node.domain in ("", "ai.onnx")
            and attribute(node, "mode", "DCR") == "CRD")


class ExpandSpaceToDepthCRD(ExpandNodes):
    def select(self, model):
        return _is_crd

    def expand(self, model, node, types, fresh):
        shape = types.get(node.input[0], (0, None))[1]
        b = int(attribute(node, "blocksize", 0))
        if not shape or len(shape) != 4 or not all(shape) or b < 1 or shape[2] % b or shape[3] % b:
            return None
        n, c, h, w = shape
        base = node.name or node.output[0]
        split, merged = fresh(f"{base}_crd_split"), fresh(f"{base}_crd_merged")
        set_initializer(model, split, np.array([n, c, h // b, b, w // b, b], np.int64))
        set_initializer(model, merged, np.array([n, c * b * b, h // b, w // b], np.int64))
        blocks, moved = fresh(f"{base}_crd_blocks"), fresh(f"{base}_crd_moved")
        return [
            helper.make_node("Reshape", [node.input[0], split], [blocks], name=f"{base}/split"),
            helper.make_node("Transpose", [blocks], [moved], perm=[0, 1, 3, 5, 2, 4],
                             name=f"{base}/transpose"),
            helper.make_node("Reshape", [moved, merged], list(node.output), name=f"{base}/merge"),
        ]
