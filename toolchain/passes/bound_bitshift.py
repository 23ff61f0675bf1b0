"""BoundBitShift: a BitShift whose amount may lie outside [0, bits) gets ONNX's answer there.

Before: ``BitShift(x, y)`` on integers. ONNX (opset 28 spells it out) defines a shift by a
negative amount or by the type's width or more: 0, except -1 for a right shift of a negative
x. TVM emits C's ``<<``/``>>``, whose result there is undefined (it differed between host and
arm-a72 in onnx's node tests). After: ``ok = 0 <= y < bits``, ``z = BitShift(x, Where(ok, y,
0))`` (named ``.../edgec_bounded``, which this pass leaves alone), ``Where(ok, z, fill)`` with
fill 0, or for a right shift of a signed type ``Where(x < 0, -1, 0)``; the output keeps its
name. A shift whose amounts are constants inside the range is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from toolchain.passes.expand import ExpandNodes, NodeWriter
from toolchain.passes.graph import attribute, const_value, set_initializer


_BOUNDED = "edgec_bounded"  # the name of a BitShift this pass wrote: its amount is in range


def _is_shift(node: onnx.NodeProto) -> bool:
    return (node.op_type == "BitShift" and node.domain in ("", "ai.onnx")
            and not node.name.endswith(_BOUNDED))


class BoundBitShift(ExpandNodes):
    def select(self, model):
        return _is_shift

    def expand(self, model, node, types, fresh):
        elem = types.get(node.input[0], (0, None))[0]
        dtype = helper.tensor_dtype_to_np_dtype(elem) if elem else None
        if dtype is None or dtype.kind not in "iu" or self._in_range(model, node, dtype):
            return None
        return self._bound(model, node, dtype, fresh)

    @staticmethod
    def _in_range(model, node, dtype) -> bool:
        y = const_value(model, node.input[1])
        bits = dtype.itemsize * 8
        return y is not None and bool(np.all((y.astype(np.int64) >= 0) & (y < bits)))

    @staticmethod
    def _bound(model, node, dtype, fresh) -> list[onnx.NodeProto]:
        x, y = node.input[0], node.input[1]
        base = node.name or node.output[0]
        add = NodeWriter(node, fresh)
        new = add.nodes

        def const(tag, value):
            name = fresh(f"{base}_{tag}")
            set_initializer(model, name, np.array(value, dtype))
            return name

        zero = const("zero", 0)
        ok = add("Less", [y, const("bits", dtype.itemsize * 8)])
        if dtype.kind == "i":
            ok = add("And", [add("GreaterOrEqual", [y, zero]), ok])
        amount = add("Where", [ok, y, zero])
        shifted = fresh(f"{base}_shifted")
        new.append(helper.make_node("BitShift", [x, amount], [shifted],
                                    name=f"{base}/{_BOUNDED}",
                                    direction=attribute(node, "direction", "LEFT")))
        fill = zero
        if dtype.kind == "i" and attribute(node, "direction", "LEFT") == "RIGHT":
            fill = add("Where", [add("Less", [x, zero]), const("minus_one", -1), zero])
        add("Where", [ok, shifted, fill], node.output[0])
        return new
