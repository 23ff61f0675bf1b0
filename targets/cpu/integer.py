"""LowerQDQToInteger: a QDQ model's conv2d/matmul computed in integers, int8 from layer to layer.

Before: TVM's ONNX importer keeps a QDQ model's arithmetic in float32::

    y  = conv2d(dequantize(xq, s_x, z_x), dequantize(W, s_w, 0)) + bias
    yq = quantize(maxpool(relu(y)), s_y, z_y)               # the next layer's input

After: one int8 GEMM kernel (``qgemm.py``) per conv/matmul, whose epilogue adds an int32 bias
(the float bias over ``s_x * s_w``, minus the zero-point correction ``z_x * sum(W)``),
requantizes with one float scale ``s_x * s_w / s_y`` per output channel, applies ReLU/Clip as
an integer clamp and writes ``yq`` directly. Max pooling commutes with the (monotone)
requantization, so it runs on the int8 result. Convs work channels-last inside (NHWC, so
im2col and the reduction are contiguous along channels); an NCHW int8 tensor that only
feeds other lowered convs never exists: the layout transposes sit at the borders of the
integer region. Weights become packed int8 constants.

Depthwise convs get their own kernel (``qdepthwise.py``: the reduction is only the window).
Where no quantize follows (a conv feeding GlobalAveragePool, the last Gemm of a float-output
model), the same kernel scales the int32 sum back to float32 and the float ops stay. Grouped
convs other than depthwise, weights that are not constant int8 with zero point 0, and activations
without a constant per-tensor scale are left as they were (float compute).

Run it before FoldConstant, which would fold the weight's dequantize away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import GenericConst

from toolchain.targets.cpu import qdepthwise, qgemm, qrows
from toolchain.targets.cpu.qelementwise import (add_multipliers, dequantize_table, qadd_te,
                                                qaffine_te, qmean_te, qrescale_te, qsum_te)
from toolchain.targets.cpu.vector import VectorUnit

log = logging.getLogger(__name__)

_INT8 = ("int8", "uint8")
_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_OPAQUE = 8  # relax OpPatternKind kOpaque: FuseOps leaves the kernel alone


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, GenericConst) else None


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


def _static_shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(hasattr(d, "value") for d in shape):
        return None
    return [int(d.value) for d in shape]


def _output_scale(s_x: float, w_scale: np.ndarray, s_y: float) -> np.ndarray:
    """The requantization scale per output channel as onnxruntime's QLinearConv/QGemm compute
    it: (s_x * s_w) / s_y in float32, two float32 roundings (the float64 quotient rounded once
    differs in the last bit for ~1 channel in 4, which moves a near-tie output by one step)."""
    return (np.float32(s_x) * np.asarray(w_scale, np.float32)) / np.float32(s_y)


def _op(call) -> str:
    return getattr(getattr(call, "op", None), "name", "") if isinstance(call, relax.Call) else ""


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    """``fuse_requant``: rewrite at each quantize (conv/matmul + bias + clamp + pool + quantize);
    otherwise rewrite each remaining float conv/matmul on int8 inputs with a float epilogue."""

    def __init__(self, mod, vector: VectorUnit | None, fuse_requant: bool, nhwc: dict):
        super().__init__(mod)
        self.vector = vector
        self.fuse_requant = fuse_requant
        self.rewritten = 0
        self.nhwc = nhwc  # NCHW int8 var -> the NHWC var it was transposed from (shared)
        self.to_int = _TO_INT.get(vector.int8_dot) if vector is not None else None

    # -- matching ---------------------------------------------------------------------------
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
        return value if _op(value) == op else None

    def _eval_const(self, expr) -> np.ndarray | None:
        """A constant, or a dequantize/reshape/permute of constants, evaluated in numpy."""
        value = _const(expr)
        if value is not None:
            return value
        call = self._value(expr)
        name = _op(call)
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
            shape = _static_shape(call)
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

    def _core(self, expr):
        """A float conv2d/matmul on int8 operands -> a description of the GEMM, or None."""
        call = self._value(expr)
        name = _op(call)
        if name == "relax.nn.conv2d" and _dtype(call) == "float32":
            return self._conv_core(call)
        if name == "relax.matmul" and _dtype(call) == "float32":
            return self._matmul_core(call)
        return None

    def _conv_core(self, call):
        a = call.attrs
        if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or (
                a.out_layout not in (None, "", "NCHW")):
            return None
        act, wt = self._activation(call.args[0]), self._weight(call.args[1])
        groups = int(a.groups)
        # Regular convs, and depthwise ones (one filter per channel); other groupings stay float.
        depthwise = (groups > 1 and wt is not None and wt[0].shape[1] == 1
                     and wt[0].shape[0] == groups)
        if groups != 1 and not depthwise:
            return None
        if act is None or wt is None or (wt[1].size > 1 and wt[2] != 0):
            return None
        if _static_shape(act[0]) is None or _static_shape(call) is None:
            return None
        w, scale, _ = wt
        o = w.shape[0]
        geom = qgemm.ConvGeometry(tuple(int(k) for k in w.shape[2:]),
                                  tuple(int(v) for v in a.strides),
                                  tuple(int(v) for v in a.dilation),
                                  tuple(int(v) for v in a.padding))
        return {"kind": "conv", "act": act, "w_ohwi": np.ascontiguousarray(w.transpose(0, 2, 3, 1)),
                "w_scale": np.broadcast_to(scale, (o,)), "geom": geom, "out_shape": _static_shape(call),
                "depthwise": depthwise}

    def _matmul_core(self, call):
        act = self._activation(call.args[0])
        rhs = call.args[1]
        perm = self._bound(rhs, "relax.permute_dims")
        if perm is not None:
            axes = perm.attrs.axes
            if axes is not None and [int(x) for x in axes] != [1, 0]:
                return None
            wt = self._weight(perm.args[0])
            if wt is None:
                return None
            w_nk, scale, axis = wt[0], wt[1], wt[2]  # W is (N, K); per-channel axis 0
            if scale.size > 1 and axis != 0:
                return None
        else:
            wt = self._weight(rhs)
            if wt is None or wt[0].ndim != 2:
                return None
            w_nk, scale, axis = np.ascontiguousarray(wt[0].T), wt[1], wt[2]
            if scale.size > 1 and axis != 1:
                return None
        if act is None or w_nk.ndim != 2:
            return None
        shape = _static_shape(act[0])
        if shape is None or len(shape) < 2 or _static_shape(call) is None:
            return None
        n = w_nk.shape[0]
        return {"kind": "matmul", "act": act, "w_ohwi": w_nk.reshape(n, 1, 1, -1),
                "w_scale": np.broadcast_to(scale, (n,)), "geom": qgemm.ConvGeometry(),
                "out_shape": _static_shape(call)}

    # -- rewriting --------------------------------------------------------------------------
    def _input_nhwc(self, core):
        """The activation as [N, H, W, C] for the kernel (reusing an NHWC producer)."""
        q = self._root(core["act"][0])
        shape = _static_shape(q)
        if core["kind"] == "matmul":
            rows = int(np.prod(shape[:-1]))
            return self.builder_.emit(relax.op.reshape(q, [1, 1, rows, shape[-1]]))
        if q in self.nhwc:
            return self.nhwc[q]
        return self.builder_.emit(relax.op.permute_dims(q, [0, 2, 3, 1]))

    def _emit_gemm(self, core, bias: np.ndarray | None, out_dtype: str, s_y: float = 1.0,
                   z_y: int = 0, clamp=None, float_tail=None):
        """The GEMM kernel; ``float_tail`` (float32 output only): (float bias [O] or None,
        ReLU) applied after the scaling, as the float graph does."""
        q, s_x, z_x = core["act"]
        w_ohwi, w_scale = core["w_ohwi"], core["w_scale"].astype(np.float64)
        o = w_ohwi.shape[0]
        if core.get("depthwise"):
            return self._emit_depthwise(core, bias, out_dtype, s_y, z_y, clamp)
        instr = _dot_instr(self.vector, bool(w_ohwi.min(initial=0) > -128))
        geom = core["geom"]
        chunk = qrows.row_chunk(geom.kernel, geom.dilation, w_ohwi.shape[3], o) if (
            core["kind"] == "conv" and instr.tile is None) else 0
        wp = qgemm.pack_weight(qrows.chunk_weight(w_ohwi, chunk) if chunk else w_ohwi, instr)
        o_pad = qgemm.padded_channels(wp, instr)
        zp8 = z_x - 128 if _dtype(q) == "uint8" else z_x  # zero point in int8 terms
        zp_a = zp8 + (128 if instr.act_dtype == "uint8" else 0)  # as the kernel stores A
        wsum = np.zeros(o_pad, np.int64)
        wsum[:o] = w_ohwi.astype(np.int64).reshape(o, -1).sum(axis=1)
        b = np.zeros(o_pad, np.float64)
        real = s_x * w_scale
        if bias is not None:
            b[:o] = np.round(bias.astype(np.float64) / np.where(real == 0, 1, real))
        b -= zp_a * wsum
        if np.abs(b).max(initial=0) >= 2 ** 31:
            return None
        scale = np.zeros(o_pad, np.float32)
        scale[:o] = _output_scale(s_x, core["w_scale"], s_y) if out_dtype != "float32" else real
        x = self._input_nhwc(core)
        own = _POINTWISE.get(self.vector.int8_dot) if self.vector is not None else None
        if own is not None and own.supports(_static_shape(x), _dtype(x), core["geom"], o):
            # The target folder's kernel (e.g. targets/cortexm/int8_pointwise.py), scheduled.
            func = own.build(_static_shape(x), _dtype(x), core["geom"], o, out_dtype=out_dtype,
                             out_zero=z_y, clamp=clamp, to_int=self.to_int)
            gv = self.builder_.add_func(func, "qgemm_" + core["kind"])
            b_own = b[:o] + (zp_a - zp8) * wsum[:o]  # its activations in int8 terms
            out = self.builder_.emit(relax.call_tir(
                gv, [x, relax.const(own.pack_weights(w_ohwi.reshape(o, -1))),
                     relax.const(b_own.astype(np.int32)), relax.const(scale[:o])],
                relax.TensorType([int(d) for d in func.params[-1].shape], out_dtype)))
            self.rewritten += 1
            return out
        out_hw = self._out_hw(core, _static_shape(x))
        tp = qgemm.row_tile(instr, *out_hw, o)
        rows = None
        if chunk:  # few input channels: im2col copies whole kernel rows (qrows.py)
            rows = qrows.RowChunks(int(w_ohwi.shape[3]), chunk, out_hw[1])
            pads = qrows.padding_for(_static_shape(x), geom, chunk)
            x = self.builder_.emit(self.builder_.call_te(
                lambda xt: qrows.pad_rows_te(xt, pads, z_x), x, primfunc_name_hint="pad_rows"))
            geom = qgemm.ConvGeometry(geom.kernel, geom.strides, geom.dilation)

        # int4 weights (all in [-8, 7]) are stored two per byte and unpacked per call.
        int4_shape = wp.shape if qgemm.fits_int4(wp) else None
        w_const = qgemm.pack_int4(wp) if int4_shape is not None else wp

        f_bias, f_relu = float_tail if float_tail is not None else (None, False)

        def kernel(xt, wt, bt, st, *fb):
            return qgemm.gemm_te(xt, wt, bt, st, geom=geom, in_zero=z_x, instr=instr,
                                 tp=tp, out_channels=o, out_dtype=out_dtype, out_zero=z_y,
                                 clamp=clamp, int4_shape=int4_shape,
                                 to_int=self.to_int, rows=rows,
                                 float_bias=fb[0] if fb else None, float_relu=f_relu)

        attrs = {"op_pattern": 8, "edgec.qgemm": instr.name, "edgec.qgemm_rows": tp}
        if rows is not None:
            attrs["edgec.qgemm_chunk_vector"] = rows.vector
        extra = [] if f_bias is None else [relax.const(f_bias.astype(np.float32))]
        out = self.builder_.emit(self.builder_.call_te(
            kernel, x, relax.const(w_const), relax.const(b[:o].astype(np.int32)),
            relax.const(scale[:o]), *extra, primfunc_name_hint="qgemm_" + core["kind"],
            primfunc_attrs=attrs))
        self.rewritten += 1
        return out

    def _emit_depthwise(self, core, bias, out_dtype: str, s_y: float, z_y: int, clamp):
        """The depthwise kernel (qdepthwise.py): weights [R, S, C], int8 arithmetic."""
        q, s_x, z_x = core["act"]
        w_ohwi = core["w_ohwi"]  # [C, R, S, 1]
        c = w_ohwi.shape[0]
        zp8 = z_x - 128 if _dtype(q) == "uint8" else z_x
        real = s_x * core["w_scale"].astype(np.float64)
        b = np.zeros(c, np.float64) if bias is None else np.round(
            bias.astype(np.float64) / np.where(real == 0, 1, real))
        b -= zp8 * w_ohwi.astype(np.int64).reshape(c, -1).sum(axis=1)
        if np.abs(b).max(initial=0) >= 2 ** 31:
            return None
        scale = (_output_scale(s_x, core["w_scale"], s_y) if out_dtype != "float32"
                 else real.astype(np.float32))
        w_rsc = np.ascontiguousarray(w_ohwi[..., 0].transpose(1, 2, 0))
        x = self._input_nhwc(core)
        own = _DEPTHWISE.get(self.vector.int8_dot) if self.vector is not None else None
        if own is not None and own.supports(_static_shape(x), _dtype(x)):
            # The target folder's kernel (e.g. targets/cortexm/int8_depthwise.py), scheduled.
            func = own.build(_static_shape(x), _dtype(x), core["geom"], in_zero=z_x,
                             out_dtype=out_dtype, out_zero=z_y, clamp=clamp,
                             to_int=self.to_int)
            gv = self.builder_.add_func(func, "qgemm_dwconv")
            out_shape = [int(d) for d in func.params[-1].shape]
            out = self.builder_.emit(relax.call_tir(
                gv, [x, relax.const(own.pack_weights(w_rsc)), relax.const(b.astype(np.int32)),
                     relax.const(scale)], relax.TensorType(out_shape, out_dtype)))
            self.rewritten += 1
            return out

        def kernel(xt, wt, bt, st):
            return qdepthwise.depthwise_te(xt, wt, bt, st, geom=core["geom"], in_zero=z_x,
                                           out_dtype=out_dtype, out_zero=z_y, clamp=clamp,
                                           to_int=self.to_int)

        out = self.builder_.emit(self.builder_.call_te(
            kernel, x, relax.const(w_rsc), relax.const(b.astype(np.int32)),
            relax.const(scale), primfunc_name_hint="qgemm_dwconv",
            primfunc_attrs={"op_pattern": 8, "edgec.qgemm": qdepthwise.KIND}))
        self.rewritten += 1
        return out

    @staticmethod
    def _out_hw(core, x_shape) -> tuple[int, int]:
        """(OH, OW) of the kernel's [N, OH, OW, O] output."""
        if core["kind"] == "matmul":
            return 1, int(x_shape[2])
        return int(core["out_shape"][2]), int(core["out_shape"][3])

    def _finish_layout(self, core, out_nhwc, pools=()):
        """NHWC kernel output (+ pools) -> the layout the graph expects, remembering NHWC."""
        if core["kind"] == "matmul":
            return relax.op.reshape(out_nhwc, core["out_shape"][:-1] + [_static_shape(out_nhwc)[-1]])
        for attrs in pools:
            out_nhwc = self.builder_.emit(relax.op.nn.max_pool2d(
                out_nhwc, pool_size=attrs.pool_size, strides=attrs.strides,
                padding=attrs.padding, dilation=attrs.dilation, ceil_mode=attrs.ceil_mode,
                layout="NHWC"))
        return self._register_nchw(out_nhwc)

    def _fused(self, call):
        """quantize(pool*(relu|clip*(add(core, bias)))) -> one kernel with int8 output."""
        s_y, z_y = _const(call.args[1]), _const(call.args[2])
        out_dtype = _dtype(call)
        if s_y is None or z_y is None or s_y.size != 1 or z_y.size != 1 or out_dtype not in _INT8:
            return None
        s_y, z_y = float(s_y.reshape(())), int(z_y.reshape(()))
        lo, hi = _QRANGE[out_dtype]

        def q(v: float) -> int:
            return int(np.clip(np.round(v / s_y) + z_y, *_QRANGE[out_dtype]))

        pools, expr = [], call.args[0]
        for _ in range(16):
            value = self._value(expr)
            name = _op(value)
            if name == "relax.nn.relu":
                lo = max(lo, q(0.0))
            elif name == "relax.clip":
                a_min, a_max = (float(v.value) for v in value.args[1:3])
                lo, hi = max(lo, q(a_min)), min(hi, q(a_max))
            elif name == "relax.nn.max_pool2d" and value.attrs.layout == "NCHW" and (
                    value.attrs.out_layout in (None, "", "NCHW")):
                pools.append(value.attrs)
            else:
                break
            expr = value.args[0]
        bias = None
        value = self._value(expr)
        if _op(value) == "relax.add":
            for core_arg, bias_arg in ((value.args[0], value.args[1]),
                                       (value.args[1], value.args[0])):
                core = self._core(core_arg)
                bias = self._eval_const(bias_arg) if core is not None else None
                if bias is not None:
                    break
            else:
                return None
        else:
            core = self._core(expr)
        if core is None or (pools and core["kind"] != "conv"):
            return None
        o = core["w_ohwi"].shape[0]
        if bias is not None:
            if bias.size != o or bias.reshape(-1).shape[0] != o:
                return None
            want = [1, o, 1, 1] if core["kind"] == "conv" else [o]
            if list(bias.shape) not in (want, [o], [1, o]):
                return None
            bias = bias.reshape(-1)
        if lo > hi:
            return None
        out = self._emit_gemm(core, bias, out_dtype, s_y, z_y, (lo, hi))
        return None if out is None else self._finish_layout(core, out, pools[::-1])

    def _activation_matmul(self, call):
        """matmul(dequantize(a), dequantize(b)) of two activations (attention's Q.K^T and P.V)
        -> an int32 matmul of the zero-point-free int16 values, scaled once to float32."""
        if _op(call) != "relax.matmul" or _dtype(call) != "float32":
            return None
        acts = [self._activation(x) for x in call.args]
        if any(a is None for a in acts) or any(_static_shape(a[0]) is None for a in acts):
            return None
        ints = []
        for q, _, z in acts:
            wide = relax.op.astype(self._root(q), "int16")
            ints.append(self.builder_.emit(relax.op.subtract(wide, relax.const(z, "int16"))))
        acc = self.builder_.emit(relax.op.matmul(ints[0], ints[1], out_dtype="int32"))
        self.rewritten += 1
        return relax.op.multiply(relax.op.astype(acc, "float32"),
                                 relax.const(np.float32(acts[0][1] * acts[1][1]), "float32"))

    def _plain(self, call):
        """A float conv/matmul on int8 operands -> the kernel with a float32 epilogue."""
        core = self._core(call)
        if core is None:
            return self._activation_matmul(call)
        out = self._emit_gemm(core, None, "float32")
        if out is None:
            return None
        if core["kind"] == "matmul":
            return self._finish_layout(core, out)
        return relax.op.permute_dims(out, [0, 3, 1, 2])

    # -- ops that move int8 values unchanged -----------------------------------------------
    def _same_grid(self, expr, s_y: float, z_y: int, dtype: str):
        """The int8 tensor q when ``expr`` is ``dequantize(q)`` on exactly the grid (s_y, z_y)."""
        act = self._activation(expr)
        if act is None or _dtype(act[0]) != dtype:
            return None
        q, s, z = act
        return self._root(q) if (np.float32(s) == np.float32(s_y) and z == z_y) else None

    def _nhwc_of(self, q):
        return self.nhwc.get(q) if _static_shape(q) is not None and len(_static_shape(q)) == 4 else None

    def _passthrough(self, call):
        """quantize(f(dequantize(q...))) -> f(q...) in int8: exactly on one unchanged grid for
        max pooling, reshape, ReLU and the quantize-dequantize pair itself; with one rescale
        per operand for concat and residual add."""
        s_y, z_y = _const(call.args[1]), _const(call.args[2])
        dtype = _dtype(call)
        if s_y is None or z_y is None or s_y.size != 1 or z_y.size != 1 or dtype not in _INT8:
            return None
        s_y, z_y = float(s_y.reshape(())), int(z_y.reshape(()))
        value = self._value(call.args[0])
        name = _op(value)
        if name == "relax.dequantize":
            return self._same_grid(call.args[0], s_y, z_y, dtype)
        if self._is_add(value):
            return self._residual_add(value, s_y, z_y, dtype)
        if name == "relax.reshape" and self._is_add(self._value(value.args[0])):
            # a residual block's output flattened for a Linear head
            out = self._residual_add(self._value(value.args[0]), s_y, z_y, dtype)
            return None if out is None else relax.op.reshape(out, _static_shape(value))
        if name == "relax.mean":
            return self._global_mean(value, s_y, z_y, dtype)
        if isinstance(value, relax.TupleGetItem) and int(value.index) == 0:
            bn = self._value(value.tuple_value)
            return self._batch_norm(bn, s_y, z_y, dtype) if _op(bn) == "relax.nn.batch_norm" \
                else None
        if name == "relax.reshape" and _op(self._value(value.args[0])) == "relax.mean":
            # the pooled features flattened for a Linear head
            out = self._global_mean(self._value(value.args[0]), s_y, z_y, dtype)
            return None if out is None else relax.op.reshape(out, _static_shape(value))
        if name == "relax.concat":
            fields = value.args[0]
            if isinstance(fields, relax.Var):
                fields = self._value(fields)
            if not isinstance(fields, relax.Tuple):
                return None
            acts = [self._activation(f) for f in fields.fields]
            if any(a is None or _dtype(a[0]) not in _INT8 for a in acts):
                return None
            axis = int(value.attrs.axis) if value.attrs.axis is not None else 0
            srcs = [self._root(a[0]) for a in acts]
            nhwc = [self._nhwc_of(q) for q in srcs]
            channels_last = axis == 1 and all(v is not None for v in nhwc)
            parts = [self._rescale(v if channels_last else q, a[1], a[2], s_y, z_y, dtype)
                     for v, q, a in zip(nhwc, srcs, acts)]
            if channels_last:
                return self._register_nchw(self.builder_.emit(relax.op.concat(parts, axis=3)))
            return relax.op.concat(parts, axis=axis)
        if name in ("relax.nn.max_pool2d", "relax.nn.relu", "relax.reshape"):
            q = self._same_grid(value.args[0], s_y, z_y, dtype)
            if q is None:
                return None
            if name == "relax.reshape":
                return relax.op.reshape(q, _static_shape(value))
            if name == "relax.nn.relu":
                return relax.op.maximum(q, relax.const(z_y, dtype))
            a = value.attrs
            if a.layout != "NCHW" or a.out_layout not in (None, "", "NCHW"):
                return None
            src = self._nhwc_of(q)
            pool = dict(pool_size=a.pool_size, strides=a.strides, padding=a.padding,
                        dilation=a.dilation, ceil_mode=a.ceil_mode)
            if src is None:
                return relax.op.nn.max_pool2d(q, **pool)
            return self._register_nchw(self.builder_.emit(
                relax.op.nn.max_pool2d(src, **pool, layout="NHWC")))
        return None

    def _global_mean(self, value, s_y: float, z_y: int, dtype: str):
        """quantize(mean(dequantize(q), axes H, W, keepdims)) (GlobalAveragePool) -> the int32
        sum of each channel, requantized once (``qmean_te``); channels-last when q is."""
        act = self._activation(value.args[0])
        shape = _static_shape(value.args[0])
        axes = [int(a) for a in (value.attrs.axis or [])]
        if shape is None or len(shape) != 4 or sorted(axes) != [2, 3] or \
                not bool(value.attrs.keepdims):
            return None
        if act is None:
            return self._float_conv_mean(value, s_y, z_y, dtype)
        q, s_x, z_x = act
        src = self._root(q)
        nhwc = self._nhwc_of(src)
        pixels = shape[2] * shape[3]
        scale = np.float32(s_x / (pixels * s_y))

        def kernel(xt):
            return qmean_te(xt, nhwc is not None, z_x, scale, z_y, dtype, self.to_int)

        self.rewritten += 1
        return self.builder_.emit(self.builder_.call_te(
            kernel, nhwc if nhwc is not None else src, primfunc_name_hint="qmean"))

    def _float_conv_mean(self, value, s_y: float, z_y: int, dtype: str):
        """quantize(mean(relu?(conv(dq(x), dq(W)) + bias), H, W)): a conv whose output stays
        float (no quantize before the pooling) -> the GEMM with its float bias and ReLU in
        the epilogue, channels-last, the mean over its rows (the same float operations in the
        same order as the graph's), then the quantize."""
        relu = _op(self._value(value.args[0])) == "relax.nn.relu"
        add = self._value(self._value(value.args[0]).args[0]) if relu else self._value(value.args[0])
        if _op(add) != "relax.add":
            return None
        core = bias = None
        for core_arg, bias_arg in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
            core = self._core(core_arg)
            bias = self._eval_const(bias_arg) if core is not None else None
            if bias is not None:
                break
        if core is None or bias is None or core["kind"] != "conv" or core.get("depthwise"):
            return None
        o = core["w_ohwi"].shape[0]
        if bias.size != o or list(bias.shape) not in ([1, o, 1, 1], [o]):
            return None
        out = self._emit_gemm(core, None, "float32", float_tail=(bias.reshape(-1), relu))
        if out is None:
            return None
        n = _static_shape(out)[0]
        mean = self.builder_.emit(relax.op.mean(out, axis=[1, 2], keepdims=True))
        pooled = self.builder_.emit(relax.op.reshape(mean, [n, o, 1, 1]))
        return relax.op.quantize(pooled, relax.const(np.float32(s_y)),
                                 relax.const(z_y, dtype), axis=1, out_dtype=dtype)

    def _batch_norm(self, bn, s_y: float, z_y: int, dtype: str):
        """quantize(batch_norm(dequantize(q)), inference, constant parameters) -> one int8
        kernel with onnxruntime's formula: inv_std = 1 / sqrt(var + eps), new_scale = inv_std *
        gamma, new_bias = beta - mean * new_scale (float32, as its BatchNormalization), then
        x * new_scale + new_bias without FMA (``qaffine_te``); channels-last when q is."""
        if self.to_int is not None:
            # Targets with their own float -> int rounding (Cortex-M4/M7, single-precision
            # FPU): qaffine_te's float64 steps gave wrong codes on the M4 (tests/test_cortexm
            # small_cnn); the BatchNormalization stays dequantize -> float -> quantize there.
            return None
        act = self._activation(bn.args[0])
        shape = _static_shape(bn.args[0])
        params = [self._eval_const(a) for a in bn.args[1:5]]
        if act is None or shape is None or len(shape) != 4 or int(bn.attrs.axis) != 1 or \
                any(p is None or p.size != shape[1] for p in params):
            return None
        gamma, beta, mean, var = (p.reshape(-1).astype(np.float32) for p in params)
        eps = np.float32(float(bn.attrs.epsilon))
        inv_std = np.float32(1) / np.sqrt(var + eps)
        new_scale = inv_std * gamma
        new_bias = beta - mean * new_scale
        q, s_x, z_x = act
        src = self._root(q)
        nhwc = self._nhwc_of(src)
        table = dequantize_table(z_x, s_x, _dtype(q))
        out = self.builder_.emit(self.builder_.call_te(
            lambda xt, tt, st, bt: qaffine_te(xt, tt, st, bt, 3 if nhwc is not None else 1,
                                              s_y, z_y, dtype),
            nhwc if nhwc is not None else src, relax.const(table), relax.const(new_scale),
            relax.const(new_bias), primfunc_name_hint="qaffine"))
        self.rewritten += 1
        return self._register_nchw(out) if nhwc is not None else out

    def _is_add(self, value) -> bool:
        """``value`` is add(x, y) or relu(add(x, y)), or the same with ONNX Sum's form."""
        if _op(value) == "relax.nn.relu":
            value = self._value(value.args[0])
        return self._add_operands(value) is not None

    def _add_operands(self, add):
        """(x, y, is_sum) for add(x, y), or for ONNX Sum of two inputs as TVM imports it:
        sum(stack([broadcast_to(x), broadcast_to(y)]), axis 0), same shapes; else None."""
        if _op(add) == "relax.add":
            return add.args[0], add.args[1], False
        if _op(add) != "relax.sum" or add.attrs.keepdims or \
                [int(a) for a in (add.attrs.axis or [])] != [0]:
            return None
        stack = self._bound(add.args[0], "relax.stack")
        fields = None if stack is None or int(stack.attrs.axis) != 0 else stack.args[0]
        if isinstance(fields, relax.Var):
            fields = self._value(fields)
        if not isinstance(fields, relax.Tuple) or len(fields.fields) != 2:
            return None
        xs = []
        for f in fields.fields:
            b = self._bound(f, "relax.broadcast_to")
            x = b.args[0] if b is not None else f
            if _static_shape(x) is None or _static_shape(x) != _static_shape(f):
                return None
            xs.append(x)
        return xs[0], xs[1], True

    def _residual_add(self, value, s_y: float, z_y: int, dtype: str):
        """quantize(relu?(dequantize(a) + dequantize(b))) -> one int8 elementwise kernel (the
        integer add ``qadd``, channels-last when both operands are): see ``qadd_te``."""
        lo = z_y if _op(value) == "relax.nn.relu" else _QRANGE[dtype][0]
        add = self._value(value.args[0]) if _op(value) == "relax.nn.relu" else value
        x, y, is_sum = self._add_operands(add)
        acts = [self._activation(v) for v in (x, y)]
        if any(a is None or _dtype(a[0]) not in _INT8 for a in acts):
            return None
        srcs = [self._root(a[0]) for a in acts]
        if _static_shape(srcs[0]) != _static_shape(srcs[1]):
            return None
        nhwc = [self._nhwc_of(q) for q in srcs]
        channels_last = all(v is not None for v in nhwc)
        a, b = nhwc if channels_last else srcs
        if is_sum:  # onnxruntime's float arithmetic, bit for bit (qsum_te)
            lo, hi = max(lo, _QRANGE[dtype][0]), _QRANGE[dtype][1]
            tables = [relax.const(dequantize_table(z, s, _dtype(q))) for q, s, z in acts]
            out = self.builder_.emit(self.builder_.call_te(
                lambda at, bt, ta, tb: qsum_te(at, bt, ta, tb, s_y, z_y, (lo, hi), dtype),
                a, b, *tables, primfunc_name_hint="qsum"))
            self.rewritten += 1
            return self._register_nchw(out) if channels_last else out
        fixed = add_multipliers(acts[0][1] / s_y, acts[1][1] / s_y)
        if fixed is None:
            return None
        (m_a, m_b), shift = fixed
        lo, hi = max(lo, _QRANGE[dtype][0]), _QRANGE[dtype][1]

        def kernel(at, bt):
            return qadd_te(at, bt, (acts[0][2], m_a), (acts[1][2], m_b), shift, z_y, (lo, hi),
                           dtype)

        out = self.builder_.emit(self.builder_.call_te(kernel, a, b, primfunc_name_hint="qadd"))
        self.rewritten += 1
        return self._register_nchw(out) if channels_last else out

    def _rescale(self, q, s: float, z: int, s_y: float, z_y: int, dtype: str):
        """int8 ``q`` on grid (s, z) moved to the grid (s_y, z_y): itself when they agree, else
        onnxruntime's DequantizeLinear then QuantizeLinear in float32 (``qrescale_te``), a
        kernel of its own: fused into the concat, its vector loop would also compute the
        rescale (then select) for the channels copied unchanged."""
        if np.float32(s) == np.float32(s_y) and z == z_y and _dtype(q) == dtype:
            return q
        call = self.builder_.call_te(lambda x: qrescale_te(x, z, s, z_y, s_y, dtype), q,
                                     primfunc_name_hint="qrescale")
        gv = call.args[0]
        self.builder_.update_func(gv, self.builder_.get()[gv].with_attr("op_pattern", _OPAQUE))
        return self.builder_.emit(call)

    def _register_nchw(self, nhwc):
        nchw = self.builder_.emit(relax.op.permute_dims(nhwc, [0, 3, 1, 2]))
        self.nhwc[nchw] = nhwc
        return nchw

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = _op(call)
        new = None
        if self.fuse_requant and name == "relax.quantize":
            new = self._fused(call)
            if new is None:
                new = self._passthrough(call)
        elif not self.fuse_requant and name in ("relax.matmul", "relax.nn.conv2d"):
            new = self._plain(call)
        return call if new is None else new


@tvm.transform.module_pass(opt_level=0, name="LowerQDQToInteger")
class LowerQDQToInteger:
    """Rewrite QDQ conv2d/matmul into int8 GEMM kernels (see the module docstring).

    ``vector``: the device's SIMD facts (targets/cpu/vector.py), whose ``int8_dot``
    picks the dot instruction (and so the weight packing); None builds the portable form.
    ``target`` (the tvm Target) is kept for the stages' common signature.
    """

    def __init__(self, target=None, vector: VectorUnit | None = None):
        self.target = target
        self.vector = vector

    def transform_module(self, mod, ctx):
        nhwc: dict = {}
        for fuse in (True, False):
            for gv, func in list(mod.functions.items()):
                if isinstance(func, relax.Function):
                    lowerer = _Lowerer(mod, self.vector, fuse, nhwc)
                    new = lowerer.visit_expr(func)
                    mod = lowerer.builder_.get()
                    mod[gv] = new
                    log.info("%s: %d quantized conv/matmul now integer (%s)", gv.name_hint,
                             lowerer.rewritten, "requantized" if fuse else "float output")
            mod = relax.transform.DeadCodeElimination(["main"])(mod)
        return mod


_DOT_INSTRS = {"sdot": qgemm.SDOT, "vpdpbusd": qgemm.VNNI, "generic": qgemm.GENERIC}
# int8_dot family -> its devices' float -> int32 rounding conversion (qgemm.requantize).
_TO_INT: dict[str, Callable] = {}


def register_dot_instr(int8_dot: str, instr: qgemm.DotInstr, *,
                       to_int: Callable | None = None) -> None:
    """A target folder's own int8 GEMM step for devices whose ``int8_dot`` names it (its
    tensor intrinsic registered by the folder, e.g. targets/cortexm/int8_dot.py).
    ``to_int``: their rounding float -> int32 conversion, for requantize."""
    _DOT_INSTRS[int8_dot] = instr
    if to_int is not None:
        _TO_INT[int8_dot] = to_int
    else:
        _TO_INT.pop(int8_dot, None)


@dataclass(frozen=True)
class DepthwiseKernel:
    """A target folder's own int8 depthwise kernel: ``supports(x_shape, x_dtype)``,
    ``build(x_shape, x_dtype, geom, *, in_zero, out_dtype, out_zero, clamp, to_int)``
    -> a scheduled PrimFunc (X, W, bias, scale, Y), ``pack_weights(w_rsc)`` -> its W."""

    supports: Callable
    build: Callable
    pack_weights: Callable


_DEPTHWISE: dict[str, DepthwiseKernel] = {}


def register_depthwise(int8_dot: str, kernel: DepthwiseKernel) -> None:
    """Devices whose ``int8_dot`` is this family take ``kernel`` for int8 depthwise convs
    (where it ``supports`` the input; elsewhere qdepthwise.py's)."""
    _DEPTHWISE[int8_dot] = kernel


_POINTWISE: dict[str, DepthwiseKernel] = {}


def register_pointwise(int8_dot: str, kernel: DepthwiseKernel) -> None:
    """Devices whose ``int8_dot`` is this family take ``kernel`` for int8 GEMMs (1x1 convs,
    matmuls) where ``kernel.supports(x_shape, x_dtype, geom, out_channels)``; its ``build``
    takes ``(x_shape, x_dtype, geom, out_channels, *, out_dtype, out_zero, clamp, to_int)``
    and ``pack_weights`` the [O, K] int8 weights; elsewhere the generic GEMM."""
    _POINTWISE[int8_dot] = kernel


def _dot_instr(vector: VectorUnit | None, symmetric_weights: bool) -> qgemm.DotInstr:
    """The int8 GEMM's instruction for the device's ``int8_dot`` fact; with weights in
    [-127, 127], AArch64 NEON sums pairs of products in int16 (3 instructions per 16 products
    instead of 4)."""
    if vector is None:
        return qgemm.GENERIC
    if vector.int8_dot == "smull":
        return qgemm.NEON_SMLAL if symmetric_weights else qgemm.NEON_SMULL
    if vector.int8_dot not in _DOT_INSTRS:
        raise ValueError(f"int8_dot '{vector.int8_dot}' has no registered instruction "
                         "(its target folder registers it)")
    return _DOT_INSTRS[vector.int8_dot]


def is_quantized(model) -> bool:
    """Whether an ONNX model holds QuantizeLinear/DequantizeLinear nodes."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def integer_ops(mod) -> dict[str, int]:
    """Count matmul/conv2d calls in ``main`` by output dtype (e.g. {"conv2d:float32": 1}) and
    the int8 GEMM kernels (``qgemm``)."""
    counts: dict[str, int] = {}

    def visit(expr):
        name = _op(expr)
        if name in ("relax.matmul", "relax.nn.conv2d"):
            key = f"{name.split('.')[-1]}:{_dtype(expr)}"
            counts[key] = counts.get(key, 0) + 1
        elif name == "relax.call_tir" and expr.args[0].name_hint.startswith("qgemm"):
            key = f"{expr.args[0].name_hint.rstrip('0123456789_')}:{_dtype(expr)}"
            counts[key] = counts.get(key, 0) + 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return counts
