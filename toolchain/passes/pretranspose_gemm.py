"""PretransposeGemm: store ``Gemm(transB=1)`` weights already transposed.

Before: Gemm with a constant B and transB=1 (PyTorch's Linear export), which the TVM importer
turns into a transpose that a later constant-folding pass must compile and run. After: B is
the transposed constant and transB=0; the outputs are identical.
"""

from __future__ import annotations

import onnx

from toolchain.passes import Pass
from toolchain.passes.graph import const_value, consumers, set_initializer, unique_name


class PretransposeGemm(Pass):
    def apply(self, model):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        users = consumers(model)
        for node in model.graph.node:
            if node.op_type != "Gemm":
                continue
            trans = next((a for a in node.attribute if a.name == "transB"), None)
            if trans is None or trans.i != 1:
                continue
            b = const_value(model, node.input[1])
            if b is None or b.ndim != 2:
                continue
            name = node.input[1]
            if len(users.get(name, [])) != 1:
                name = unique_name(model, name + "_t")
                node.input[1] = name
            set_initializer(model, name, b.T.copy())
            trans.i = 0
            return model, True
        return model, False
