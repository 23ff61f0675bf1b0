"""LowerQDQToInteger: quantized matmul/conv2d computed in integers instead of fake-quant float.

Before: TVM's ONNX importer keeps a QDQ model's arithmetic in float32::

    xq = quantize(x, s_x, z_x)                    # uint8/int8, per-tensor
    y  = matmul(dequantize(xq, s_x, z_x),
                permute_dims(dequantize(W, s_w, 0)))     # W an int8 constant
    y  = conv2d(dequantize(xq, s_x, z_x), dequantize(W, s_w, 0))

After: the quantized activation goes in as int8 (uint8 is shifted by -128, an exact change of
zero point), the product is an int8 x int8 -> int32 ``matmul``/``conv2d`` (what LLVM turns into
``sdot`` on +dotprod, smull/sadalp without it), the activation zero point is removed exactly by
subtracting ``z * sum(W)`` per output channel (a constant), and one float multiply by
``s_x * s_w[channel]`` gives back float32, so the rest of the graph is unchanged. Padding of a
conv is made explicit with the zero point's value, so the correction holds at the borders too.

Only matches where the weight is a constant with zero point 0 (per-tensor or per output
channel) and the activation has a constant per-tensor scale and zero point; everything else is
left as it was. Run it before FoldConstant, which would fold the weight's dequantize away.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import GenericConst

log = logging.getLogger(__name__)

_INT8 = ("int8", "uint8")


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, GenericConst) else None


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


def _static_shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(hasattr(d, "value") for d in shape):
        return None
    return [int(d.value) for d in shape]


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod=None, dot_product: bool = False):
        super().__init__(mod)
        self.dot_product = dot_product
        self.rewritten = 0

    # -- matching ---------------------------------------------------------------------------
    def _bound(self, expr, op: str):
        """The call ``op(...)`` bound to ``expr`` (a var), or None."""
        value = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None  # None: a param
        if isinstance(value, relax.Call) and getattr(value.op, "name", "") == op:
            return value
        return None

    def _activation(self, expr):
        """``dequantize(q, s, z)`` with int8/uint8 q and constant scalar s, z -> (q, s, z)."""
        dq = self._bound(expr, "relax.dequantize")
        if dq is None or _dtype(dq.args[0]) not in _INT8:
            return None
        scale, zero = _const(dq.args[1]), _const(dq.args[2])
        if scale is None or zero is None or scale.size != 1 or zero.size != 1:
            return None
        return dq.args[0], float(scale.reshape(())), int(zero.reshape(()))

    def _weight(self, expr):
        """``dequantize(W const int8, s, 0, axis)`` -> (W, per-axis scale, axis)."""
        dq = self._bound(expr, "relax.dequantize")
        if dq is None:
            return None
        w, scale, zero = (_const(a) for a in dq.args)
        if w is None or scale is None or zero is None or w.dtype != np.int8 or np.any(zero != 0):
            return None
        axis = int(dq.attrs.axis) % w.ndim
        if scale.size not in (1, w.shape[axis]):
            return None
        return w, scale.astype(np.float64).reshape(-1), axis

    # -- rewriting --------------------------------------------------------------------------
    def _to_int8(self, q, zero: int):
        """The activation as int8 and its zero point there (uint8 shifts by -128, exactly)."""
        if _dtype(q) == "int8":
            return q, zero
        wide = self.builder_.emit(relax.op.astype(q, "int16"))
        shifted = self.builder_.emit(relax.op.subtract(wide, relax.const(128, "int16")))
        return self.builder_.emit(relax.op.astype(shifted, "int8")), zero - 128

    def _finish(self, acc, zero: int, wsum: np.ndarray, scale: np.ndarray, shape: list[int]):
        """int32 accumulator -> exact zero-point correction -> float32 times s_x * s_w."""
        if zero != 0:
            corr = (zero * wsum.astype(np.int64)).astype(np.int32).reshape(shape)
            acc = self.builder_.emit(relax.op.subtract(acc, relax.const(corr)))
        out = self.builder_.emit(relax.op.astype(acc, "float32"))
        self.rewritten += 1
        return relax.op.multiply(out, relax.const(scale.astype(np.float32).reshape(shape)))

    def _matmul(self, call):
        act, wt = self._activation(call.args[0]), None
        rhs = call.args[1]
        perm = self._bound(rhs, "relax.permute_dims")
        if perm is not None:
            axes = perm.attrs.axes
            if axes is not None and [int(a) for a in axes] != [1, 0]:
                return None
            wt = self._weight(perm.args[0])
            if wt is not None:
                w, scale, axis = wt
                wt = (np.ascontiguousarray(w.T), scale, 1 - axis)
        else:
            wt = self._weight(rhs)
        if act is None or wt is None or wt[0].ndim != 2:
            return None
        w, scale, axis = wt  # w is (K, N)
        if scale.size > 1 and axis != 1:  # per-row scales would not factor out of the sum
            return None
        q, s_x, z_x = act
        x8, zero = self._to_int8(q, z_x)
        n, shape = w.shape[1], _static_shape(q)
        if self.dot_product and shape is not None and shape[-2:-1] == [1]:
            # One row (batch 1): W (N, K) times the column x (K, 1), so that both operands run
            # contiguously along the reduction (what sdot needs), then back to (..., 1, N).
            # Without sdot the CPU schedule does better on x (1, K) times W (K, N).
            col = self.builder_.emit(relax.op.reshape(x8, [*shape[:-2], w.shape[0], 1]))
            acc = self.builder_.emit(relax.op.matmul(
                relax.const(np.ascontiguousarray(w.T)), col, out_dtype="int32"))
            acc = self.builder_.emit(relax.op.reshape(acc, [*shape[:-2], 1, n]))
        else:
            acc = self.builder_.emit(relax.op.matmul(x8, relax.const(w), out_dtype="int32"))
        return self._finish(acc, zero, w.astype(np.int64).sum(axis=0), s_x * np.broadcast_to(
            scale, (n,)), [n])

    def _conv2d(self, call):
        a = call.attrs
        if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or (
                a.out_layout not in (None, "", "NCHW")):
            return None
        act, wt = self._activation(call.args[0]), self._weight(call.args[1])
        if act is None or wt is None or (wt[1].size > 1 and wt[2] != 0):
            return None
        w, scale, _ = wt
        q, s_x, z_x = act
        x8, zero = self._to_int8(q, z_x)
        pad = [int(p) for p in a.padding]  # top, left, bottom, right
        if zero != 0 and any(pad):
            # conv2d pads with 0; the zero point's value is what the float model padded with.
            x8 = self.builder_.emit(relax.op.nn.pad(
                x8, [0, 0, 0, 0, pad[0], pad[2], pad[1], pad[3]], pad_value=float(zero)))
            pad = [0, 0, 0, 0]
        acc = self.builder_.emit(relax.op.nn.conv2d(
            x8, relax.const(w), strides=a.strides, padding=pad, dilation=a.dilation,
            groups=a.groups, data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32"))
        o = w.shape[0]
        return self._finish(acc, zero, w.astype(np.int64).reshape(o, -1).sum(axis=1),
                            s_x * np.broadcast_to(scale, (o,)), [1, o, 1, 1])

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = getattr(call.op, "name", "")
        if name not in ("relax.matmul", "relax.nn.conv2d") or _dtype(call) != "float32":
            return call
        new = self._matmul(call) if name == "relax.matmul" else self._conv2d(call)
        return call if new is None else new


@tvm.transform.module_pass(opt_level=0, name="LowerQDQToInteger")
class LowerQDQToInteger:
    """Rewrite QDQ matmul/conv2d into int8 x int8 -> int32 compute (see the module docstring).

    ``dot_product``: the target has int8 dot-product instructions; one-row matmuls then keep
    the weight as (N, K) so the reduction is contiguous in both operands.
    """

    def __init__(self, dot_product: bool = False):
        self.dot_product = dot_product

    def transform_module(self, mod, ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                lowerer = _Lowerer(mod, self.dot_product)
                mod.update_func(gv, lowerer.visit_expr(func))
                log.info("%s: %d quantized matmul/conv2d now integer", gv.name_hint,
                         lowerer.rewritten)
        return mod


def has_dot_product(target) -> bool:
    """Whether the target's features include the int8 dot-product instructions (Armv8.2 sdot)."""
    return any("dotprod" in str(a) for a in (target.attrs.get("mattr") or []))


def is_int8_matmul(func) -> bool:
    """A kernel whose ``matmul`` block multiplies two int8 buffers."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        b = sch.get(block)
        if b.name_hint == "matmul":
            # TVM 0.27 calls a read region's buffer "source".
            buffers = [r.source if hasattr(r, "source") else r.buffer for r in b.reads]
            return {str(buf.dtype) for buf in buffers} == {"int8"}
    return False


@tvm.transform.module_pass(opt_level=0, name="ScheduleExceptDotKernels")
class ScheduleExceptDotKernels:
    """Apply the schedule ``passes`` to every kernel but the int8 x int8 matmuls.

    Those stay plain loops with the reduction innermost, which LLVM's loop vectorizer turns
    into ``sdot`` on a +dotprod target; the CPU schedule vectorizes the output axis instead,
    which gives smull/saddw (4x fewer multiply-accumulates per instruction than sdot).
    """

    def __init__(self, passes):
        self.passes = list(passes)

    def transform_module(self, mod, ctx):
        from tvm import tirx

        kept = {gv: f for gv, f in mod.functions.items()
                if isinstance(f, tirx.PrimFunc) and is_int8_matmul(f)}
        for gv in kept:
            del mod[gv]
        for p in self.passes:
            mod = p(mod)
        for gv, func in kept.items():
            mod[gv] = func
        log.info("left %d int8 matmul kernel(s) to LLVM's vectorizer", len(kept))
        return mod


def integer_ops(mod) -> dict[str, int]:
    """Count matmul/conv2d calls in ``main`` by output dtype, e.g. {"matmul:int32": 3}."""
    counts: dict[str, int] = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") in (
                "relax.matmul", "relax.nn.conv2d"):
            key = f"{expr.op.name.split('.')[-1]}:{_dtype(expr)}"
            counts[key] = counts.get(key, 0) + 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return counts
