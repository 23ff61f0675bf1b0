"""Weight-only quantized embedding tables: ``Gather(DequantizeLinear(Wq, scale), ids)``.

What ``edgec compress --quantizer torchao`` writes for an ``nn.Embedding``: an int8 table
``Wq [V, D]`` with one scale per row (``axis=0``), or per column (``axis=1``), or one for the
whole tensor, and no zero point (or any). After the Relax import this is
``take(dequantize(Wq, scale, zp), ids, axis=0)``; FoldConstant would fold the dequantize and
put the table in the binary as float32, four times its bytes.

``GatherQuantizedRows`` (Relax, first in ``simplify``, before FoldConstant) rewrites it into
a gather of the int8 rows, a gather of their scales (and zero points) with the same indices,
then the dequantize arithmetic on the gathered rows only::

    (float(take(Wq, ids)) - float(take(zp, ids))) * take(scale, ids)

which is what DequantizeLinear computes element by element, so the result is the same float
values. Each ``take`` stays its own kernel with two inputs (TVM marks it opaque), so the
driver's Gather index check (targets/cpu/driver.py ``index_checks``) still bounds the ids by
the table's rows before any kernel runs.
"""

from __future__ import annotations

import logging

import numpy as np

from toolchain.targets.cpu.relax_rewrite import (bound_value, const_value, op_name,
                                                 rewrite_functions)

log = logging.getLogger(__name__)


def _relax_pass():
    import tvm
    from tvm import relax

    const, op = const_value, op_name

    def per_row(values: np.ndarray, q: np.ndarray, axis: int):
        """``values`` (a scale or zero point) as a constant shaped for the gathered rows:
        ``[V, 1]`` to be gathered (per row), ``[D]`` to broadcast (per column), or a
        scalar; None if it is none of these."""
        if values.size == 1:
            return False, values.reshape(())
        if values.ndim != 1:
            return None
        if axis == 0 and values.size == q.shape[0]:
            return True, values.reshape(-1, 1)
        if axis == 1 and values.size == q.shape[1]:
            return False, values
        return None

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.rewritten = 0

        def _value(self, expr):
            return bound_value(self, expr)

        def _table(self, expr):
            """(q, (gathered?, scale), (gathered?, zero point) or None) of a constant
            dequantized 2-D integer table, or None."""
            call = self._value(expr)
            if op(call) != "relax.dequantize":
                return None
            q, s, z = (const(a) for a in call.args)
            if q is None or s is None or q.ndim != 2 or q.dtype not in (np.int8, np.uint8):
                return None
            if str(call.attrs.out_dtype) != "float32":
                return None
            axis = int(call.attrs.axis) % 2
            scale = per_row(s.astype(np.float32), q, axis)
            zero = None
            if z is not None and np.any(z != 0):
                zero = per_row(z, q, axis)
                if zero is None:
                    return None
            return (q, scale, zero) if scale is not None else None

        def _gather(self, values, gathered: bool, ids):
            c = relax.const(values)
            return self.builder_.emit(relax.op.take(c, ids, axis=0)) if gathered else c

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if op(call) != "relax.take" or call.attrs.axis is None or int(call.attrs.axis) != 0:
                return call
            ids = call.args[1]
            if const(self._value(ids)) is not None:  # constant rows: FoldConstant's job
                return call
            table = self._table(call.args[0])
            if table is None:
                return call
            q, scale, zero = table
            rows = self.builder_.emit(relax.op.take(relax.const(q), ids, axis=0,
                                                    mode=str(call.attrs.mode)))
            x = self.builder_.emit(relax.op.astype(rows, "float32"))
            if zero is not None:  # gathered in its own dtype (V bytes), then made float
                z = self._gather(zero[1], zero[0], ids)
                z = self.builder_.emit(relax.op.astype(z, "float32"))
                x = self.builder_.emit(relax.op.subtract(x, z))
            s = self._gather(scale[1], scale[0], ids)
            self.rewritten += 1
            return relax.op.multiply(x, s)

    @tvm.transform.module_pass(opt_level=0, name="GatherQuantizedRows")
    class GatherQuantizedRows:
        """Gather int8 rows of a quantized table, then dequantize them (module doc)."""

        def transform_module(self, mod, ctx):
            return rewrite_functions(mod, _Rewriter, lambda rw: rw.rewritten,
                                     "quantized embedding tables kept int8", log)

    return GatherQuantizedRows


def GatherQuantizedRows():  # noqa: N802  (a pass, by its name)
    """Rewrite ``take(dequantize(Wq, scale), ids)`` into ``take(Wq, ids) * take(scale, ids)``
    so the table stays int8 in the binary (module doc)."""
    return _relax_pass()()
