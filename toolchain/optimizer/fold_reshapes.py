"""FoldConstantReshapes: fold reshape-like ops on constants with numpy, before FoldConstant.

Before: ``expand_dims``/``reshape``/``squeeze``/``flatten`` of constants (the ONNX importer
emits one per conv bias), each of which Relax's FoldConstant would fold by compiling and
running a kernel (~0.1 s each: minutes on a DenseNet). After: the reshaped constants
themselves. Only the shape changes, so the data is bit-identical.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import GenericConst

_RESHAPES = frozenset({"relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten"})


@relax.expr_functor.mutator
class _Folder(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = getattr(call.op, "name", "")
        if name in _RESHAPES and call.args and isinstance(call.args[0], GenericConst):
            ty = call.ty if hasattr(call, "ty") else None
            shape = getattr(getattr(ty, "shape", None), "values", None)
            if shape is not None and all(hasattr(d, "value") for d in shape):
                value = call.args[0].value.numpy()
                return relax.const(np.ascontiguousarray(value.reshape([int(d.value) for d in shape])))
        return call


@tvm.transform.module_pass(opt_level=0, name="FoldConstantReshapes")
class FoldConstantReshapes:
    def transform_module(self, mod, ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod.update_func(gv, _Folder().visit_expr(func))
        return mod
