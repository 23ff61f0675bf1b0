"""ExpandFloatMod: a floating-point ``Mod`` with ``fmod=0`` becomes ``fmod`` plus a sign fix.

Before: ``Mod(x, y)`` (fmod=0) on float, double or float16 tensors: the result takes the sign
of the divisor, as Python's and numpy's ``%``. TVM's floormod computes ``x - floor(x/y)*y``,
which is NaN for a finite x and an infinite y (numpy: ``-3 % inf == inf``, ``3 % inf == 3``).
After, as numpy's own ``npy_divmod``: ``r = Mod(x, y, fmod=1)`` (C's fmod, exact and right for
infinite divisors); where r is non-zero and its sign differs from y's, ``r + y``; where r is
zero, a zero with y's sign. NaN stays NaN. Integer Mod and ``fmod=1`` are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from toolchain.passes.expand import ExpandNodes, NodeWriter
from toolchain.passes.graph import attribute, set_initializer

_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
           TensorProto.FLOAT16: np.float16}


def _is_floor_mod(node: onnx.NodeProto) -> bool:
    return (node.op_type == "Mod" and node.domain in ("", "ai.onnx")
            and int(attribute(node, "fmod", 0)) == 0)


class ExpandFloatMod(ExpandNodes):
    def select(self, model):
        return _is_floor_mod

    def expand(self, model, node, types, fresh):
        elem = types.get(node.input[0], (0, None))[0]
        return self._expand(model, node, _FLOATS[elem], fresh) if elem in _FLOATS else None

    @staticmethod
    def _expand(model, node, dtype, fresh) -> list[onnx.NodeProto]:
        x, y = node.input[0], node.input[1]
        base = node.name or node.output[0]
        add = NodeWriter(node, fresh)
        new = add.nodes

        zeros = {}
        for sign, value in (("pos", 0.0), ("neg", -0.0)):
            zeros[sign] = fresh(f"{base}_{sign}_zero")
            set_initializer(model, zeros[sign], np.array(value, dtype))
        r = add("Mod", [x, y], fmod=1)
        y_neg = add("Less", [y, zeros["pos"]])
        r_zero = add("Equal", [r, zeros["pos"]])
        differ = add("Xor", [add("Less", [r, zeros["pos"]]), y_neg])
        fix = add("And", [differ, add("Not", [r_zero])])
        fixed = add("Where", [fix, add("Add", [r, y]), r])
        signed_zero = add("Where", [y_neg, zeros["neg"], zeros["pos"]])
        add("Where", [r_zero, signed_zero, fixed], node.output[0])
        return new
