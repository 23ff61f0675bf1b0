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

Run it before FoldConstant, which would fold the weight's dequantize away. The matching of
QDQ patterns lives in integer_match.py, the rules for the ops around the GEMMs (add, concat,
pooling, BatchNormalization) in integer_rules.py, what target folders register in
integer_registry.py.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from toolchain.targets.cpu import qdepthwise, qgemm, qmatmul, qrows
from toolchain.targets.cpu.integer_match import (INT8, QRANGE, const_value, dtype_of, op_name,
                                                 output_scale, static_shape)
from toolchain.targets.cpu.integer_registry import (DEPTHWISE, POINTWISE, TO_INT,
                                                    DepthwiseKernel, register_depthwise,
                                                    register_dot_instr, register_pointwise)
from toolchain.targets.cpu.integer_registry import instr_for as _dot_instr
from toolchain.targets.cpu.integer_rules import PassthroughRules
from toolchain.targets.cpu.vector import VectorUnit

# Target folders register their kernels here (integer_registry.py) and import them from here.
__all__ = ["DepthwiseKernel", "LowerQDQToInteger", "integer_ops", "is_quantized",
           "register_depthwise", "register_dot_instr", "register_pointwise"]

log = logging.getLogger(__name__)


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator, PassthroughRules):
    """``fuse_requant``: rewrite at each quantize (conv/matmul + bias + clamp + pool + quantize);
    otherwise rewrite each remaining float conv/matmul on int8 inputs with a float epilogue."""

    def __init__(self, mod, vector: VectorUnit | None, fuse_requant: bool, nhwc: dict):
        super().__init__(mod)
        self.vector = vector
        self.fuse_requant = fuse_requant
        self.rewritten = 0
        self.nhwc = nhwc  # NCHW int8 var -> the NHWC var it was transposed from (shared)
        self.to_int = TO_INT.get(vector.int8_dot) if vector is not None else None

    def _core(self, expr):
        """A float conv2d/matmul on int8 operands -> a description of the GEMM, or None."""
        call = self._value(expr)
        name = op_name(call)
        if name == "relax.nn.conv2d" and dtype_of(call) == "float32":
            return self._conv_core(call)
        if name == "relax.matmul" and dtype_of(call) == "float32":
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
        if static_shape(act[0]) is None or static_shape(call) is None:
            return None
        w, scale, _ = wt
        o = w.shape[0]
        geom = qgemm.ConvGeometry(tuple(int(k) for k in w.shape[2:]),
                                  tuple(int(v) for v in a.strides),
                                  tuple(int(v) for v in a.dilation),
                                  tuple(int(v) for v in a.padding))
        return {"kind": "conv", "act": act, "w_ohwi": np.ascontiguousarray(w.transpose(0, 2, 3, 1)),
                "w_scale": np.broadcast_to(scale, (o,)), "geom": geom, "out_shape": static_shape(call),
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
        shape = static_shape(act[0])
        if shape is None or len(shape) < 2 or static_shape(call) is None:
            return None
        n = w_nk.shape[0]
        return {"kind": "matmul", "act": act, "w_ohwi": w_nk.reshape(n, 1, 1, -1),
                "w_scale": np.broadcast_to(scale, (n,)), "geom": qgemm.ConvGeometry(),
                "out_shape": static_shape(call)}

    # -- rewriting --------------------------------------------------------------------------
    def _input_nhwc(self, core):
        """The activation as [N, H, W, C] for the kernel (reusing an NHWC producer)."""
        q = self._root(core["act"][0])
        shape = static_shape(q)
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
        zp8 = z_x - 128 if dtype_of(q) == "uint8" else z_x  # zero point in int8 terms
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
        scale[:o] = output_scale(s_x, core["w_scale"], s_y) if out_dtype != "float32" else real
        x = self._input_nhwc(core)
        own = POINTWISE.get(self.vector.int8_dot) if self.vector is not None else None
        if own is not None and own.supports(static_shape(x), dtype_of(x), core["geom"], o):
            # The target folder's kernel (e.g. targets/cortexm/int8_pointwise.py), scheduled.
            func = own.build(static_shape(x), dtype_of(x), core["geom"], o, out_dtype=out_dtype,
                             out_zero=z_y, clamp=clamp, to_int=self.to_int)
            gv = self.builder_.add_func(func, "qgemm_" + core["kind"])
            b_own = b[:o] + (zp_a - zp8) * wsum[:o]  # its activations in int8 terms
            out = self.builder_.emit(relax.call_tir(
                gv, [x, relax.const(own.pack_weights(w_ohwi.reshape(o, -1))),
                     relax.const(b_own.astype(np.int32)), relax.const(scale[:o])],
                relax.TensorType([int(d) for d in func.params[-1].shape], out_dtype)))
            self.rewritten += 1
            return out
        out_hw = self._out_hw(core, static_shape(x))
        tp = qgemm.row_tile(instr, *out_hw, o)
        rows = None
        if chunk:  # few input channels: im2col copies whole kernel rows (qrows.py)
            rows = qrows.RowChunks(int(w_ohwi.shape[3]), chunk, out_hw[1])
            pads = qrows.padding_for(static_shape(x), geom, chunk)
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
        zp8 = z_x - 128 if dtype_of(q) == "uint8" else z_x
        real = s_x * core["w_scale"].astype(np.float64)
        b = np.zeros(c, np.float64) if bias is None else np.round(
            bias.astype(np.float64) / np.where(real == 0, 1, real))
        b -= zp8 * w_ohwi.astype(np.int64).reshape(c, -1).sum(axis=1)
        if np.abs(b).max(initial=0) >= 2 ** 31:
            return None
        scale = (output_scale(s_x, core["w_scale"], s_y) if out_dtype != "float32"
                 else real.astype(np.float32))
        w_rsc = np.ascontiguousarray(w_ohwi[..., 0].transpose(1, 2, 0))
        x = self._input_nhwc(core)
        own = DEPTHWISE.get(self.vector.int8_dot) if self.vector is not None else None
        if own is not None and own.supports(static_shape(x), dtype_of(x)):
            # The target folder's kernel (e.g. targets/cortexm/int8_depthwise.py), scheduled.
            func = own.build(static_shape(x), dtype_of(x), core["geom"], in_zero=z_x,
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
            return relax.op.reshape(out_nhwc, core["out_shape"][:-1] + [static_shape(out_nhwc)[-1]])
        for attrs in pools:
            out_nhwc = self.builder_.emit(relax.op.nn.max_pool2d(
                out_nhwc, pool_size=attrs.pool_size, strides=attrs.strides,
                padding=attrs.padding, dilation=attrs.dilation, ceil_mode=attrs.ceil_mode,
                layout="NHWC"))
        return self._register_nchw(out_nhwc)

    def _fused(self, call):
        """quantize(pool*(relu|clip*(add(core, bias)))) -> one kernel with int8 output."""
        s_y, z_y = const_value(call.args[1]), const_value(call.args[2])
        out_dtype = dtype_of(call)
        if s_y is None or z_y is None or s_y.size != 1 or z_y.size != 1 or out_dtype not in INT8:
            return None
        s_y, z_y = float(s_y.reshape(())), int(z_y.reshape(()))
        lo, hi = QRANGE[out_dtype]

        def q(v: float) -> int:
            return int(np.clip(np.round(v / s_y) + z_y, *QRANGE[out_dtype]))

        pools, expr = [], call.args[0]
        for _ in range(16):
            value = self._value(expr)
            name = op_name(value)
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
        if op_name(value) == "relax.add":
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
        -> the int8 GEMM with b packed at run time (qmatmul.py); where that kernel does not
        take the shapes, an int32 matmul of the zero-point-free int16 values. Both are scaled
        once to float32."""
        if op_name(call) != "relax.matmul" or dtype_of(call) != "float32":
            return None
        acts = [self._activation(x) for x in call.args]
        if any(a is None for a in acts) or any(static_shape(a[0]) is None for a in acts):
            return None
        scale = np.float32(acts[0][1] * acts[1][1])
        (qa, _, za), (qb, _, zb) = acts
        out = qmatmul.lower(self.builder_, self._root(qa), za, self._root(qb), zb, scale,
                            _dot_instr(self.vector, False))
        if out is not None:
            self.rewritten += 1
            return out
        ints = []
        for q, _, z in acts:
            wide = relax.op.astype(self._root(q), "int16")
            ints.append(self.builder_.emit(relax.op.subtract(wide, relax.const(z, "int16"))))
        acc = self.builder_.emit(relax.op.matmul(ints[0], ints[1], out_dtype="int32"))
        self.rewritten += 1
        return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32"))

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

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
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


def is_quantized(model) -> bool:
    """Whether an ONNX model holds QuantizeLinear/DequantizeLinear nodes."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def integer_ops(mod) -> dict[str, int]:
    """Count matmul/conv2d calls in ``main`` by output dtype (e.g. {"conv2d:float32": 1}) and
    the int8 GEMM kernels (``qgemm``)."""
    counts: dict[str, int] = {}

    def visit(expr):
        name = op_name(expr)
        if name in ("relax.matmul", "relax.nn.conv2d"):
            key = f"{name.split('.')[-1]}:{dtype_of(expr)}"
            counts[key] = counts.get(key, 0) + 1
        elif name == "relax.call_tir" and expr.args[0].name_hint.startswith("qgemm"):
            key = f"{expr.args[0].name_hint.rstrip('0123456789_')}:{dtype_of(expr)}"
            counts[key] = counts.get(key, 0) + 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return counts
