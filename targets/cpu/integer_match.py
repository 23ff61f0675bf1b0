"""QDQ pattern matching for the integer lowering (integer.py): constants, dtypes and static
shapes of Relax expressions, and ``MatchQDQ``, the lowerer's methods that follow bindings to
what a value is (a dequantized activation, a constant int8 weight, an NHWC twin)."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.ir.expr import GenericConst

from toolchain.targets.cpu.relax_rewrite import static_shape  # noqa: F401  (re-exported)

INT8 = ("int8", "uint8")
QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}
OPAQUE = 8  # relax OpPatternKind kOpaque: FuseOps leaves the kernel alone


def const_value(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, GenericConst) else None


def dtype_of(expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


def output_scale(s_x: float, w_scale: np.ndarray, s_y: float) -> np.ndarray:
    """The requantization scale per output channel as onnxruntime's QLinearConv/QGemm compute
    it: (s_x * s_w) / s_y in float32, two float32 roundings (the float64 quotient rounded once
    differs in the last bit for ~1 channel in 4, which moves a near-tie output by one step)."""
    return (np.float32(s_x) * np.asarray(w_scale, np.float32)) / np.float32(s_y)


def op_name(call) -> str:
    return getattr(getattr(call, "op", None), "name", "") if isinstance(call, relax.Call) else ""


class MatchQDQ:
    """Mixin of the integer lowerer (a ``relax.PyExprMutator`` with ``nhwc``, the NCHW int8
    var -> NHWC var map it shares across functions): what an expression is bound to."""

    def _value(self, expr):
        """What ``expr`` is bound to, following var-to-var aliases (None for a parameter)."""
        seen = 0
        while isinstance(expr, relax.Var) and seen < 64:
            try:
                value = self.lookup_binding(expr)
            except Exception:  # noqa: BLE001
                return None
            if value is None:
                return None
            if not isinstance(value, relax.Var):
                return value
            expr, seen = value, seen + 1
        return expr if not isinstance(expr, relax.Var) else None

    def _root(self, expr):
        """``expr`` with var-to-var aliases followed to the var that holds a real value."""
        for _ in range(64):
            if not isinstance(expr, relax.Var):
                return expr
            try:
                value = self.lookup_binding(expr)
            except Exception:  # noqa: BLE001  (a parameter)
                return expr
            if not isinstance(value, relax.Var):
                return expr
            expr = value
        return expr

    def _bound(self, expr, op: str):
        value = self._value(expr)
        return value if op_name(value) == op else None

    def _eval_const(self, expr) -> np.ndarray | None:
        """A constant, or a dequantize/reshape/permute of constants, evaluated in numpy."""
        value = const_value(expr)
        if value is not None:
            return value
        call = self._value(expr)
        name = op_name(call)
        if name == "relax.dequantize":
            q, s, z = (self._eval_const(a) for a in call.args)
            if q is None or s is None or z is None:
                return None
            axis = int(call.attrs.axis) % max(q.ndim, 1)
            shape = [1] * q.ndim
            if q.ndim:
                shape[axis] = -1
            s = s.reshape(shape) if s.size > 1 else s.reshape(())
            z = z.reshape(shape) if z.size > 1 else z.reshape(())
            return ((q.astype(np.float64) - z) * s).astype(np.float32)
        if name == "relax.reshape":
            arg = self._eval_const(call.args[0])
            shape = static_shape(call)
            return None if arg is None or shape is None else arg.reshape(shape)
        if name == "relax.permute_dims":
            arg = self._eval_const(call.args[0])
            axes = call.attrs.axes
            return None if arg is None else np.transpose(
                arg, None if axes is None else [int(a) for a in axes])
        return None

    def _activation(self, expr):
        """``dequantize(q, s, z)`` with int8/uint8 q and constant scalar s, z -> (q, s, z)."""
        dq = self._bound(expr, "relax.dequantize")
        if dq is None or dtype_of(dq.args[0]) not in INT8:
            return None
        scale, zero = const_value(dq.args[1]), const_value(dq.args[2])
        if scale is None or zero is None or scale.size != 1 or zero.size != 1:
            return None
        return dq.args[0], float(scale.reshape(())), int(zero.reshape(()))

    def _weight(self, expr):
        """``dequantize(W const int8, s, 0, axis)`` -> (W, per-axis scale, axis)."""
        dq = self._bound(expr, "relax.dequantize")
        if dq is None:
            return None
        w, scale, zero = (const_value(a) for a in dq.args)
        if w is None or scale is None or zero is None or w.dtype != np.int8 or np.any(zero != 0):
            return None
        axis = int(dq.attrs.axis) % w.ndim
        if scale.size not in (1, w.shape[axis]):
            return None
        return w, scale.astype(np.float64).reshape(-1), axis

    def _same_grid(self, expr, s_y: float, z_y: int, dtype: str):
        """The int8 tensor q when ``expr`` is ``dequantize(q)`` on exactly the grid (s_y, z_y)."""
        act = self._activation(expr)
        if act is None or dtype_of(act[0]) != dtype:
            return None
        q, s, z = act
        return self._root(q) if (np.float32(s) == np.float32(s_y) and z == z_y) else None

    def _nhwc_of(self, q):
        return self.nhwc.get(q) if static_shape(q) is not None and len(static_shape(q)) == 4 else None

    def _register_nchw(self, nhwc):
        nchw = self.builder_.emit(relax.op.permute_dims(nhwc, [0, 3, 1, 2]))
        self.nhwc[nchw] = nhwc
        return nchw
