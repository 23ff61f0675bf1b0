"""The integer lowering's rules for ops around the GEMMs (integer.py): at a quantize whose input
is a residual add, ONNX Sum, concat, global average pool, BatchNormalization, max pooling,
ReLU, reshape or the quantize-dequantize pair itself, the op runs on the int8 values (exactly
on one unchanged grid, with one rescale per operand where the grids differ)."""

from __future__ import annotations

import numpy as np
from tvm import relax

from toolchain.targets.cpu.integer_match import (INT8, OPAQUE, QRANGE, MatchQDQ, const_value,
                                                 dtype_of, op_name, static_shape)
from toolchain.targets.cpu.qelementwise import (add_multipliers, dequantize_table, qadd_te,
                                                qaffine_te, qmean_te, qrescale_te, qsum_te)


class PassthroughRules(MatchQDQ):
    """Mixin of the integer lowerer: ``_passthrough(quantize call)`` -> the int8 form or None.
    ``_float_conv_mean`` uses the lowerer's ``_core`` and ``_emit_gemm``."""

    def _passthrough(self, call):
        """quantize(f(dequantize(q...))) -> f(q...) in int8: exactly on one unchanged grid for
        max pooling, reshape, ReLU and the quantize-dequantize pair itself; with one rescale
        per operand for concat and residual add."""
        s_y, z_y = const_value(call.args[1]), const_value(call.args[2])
        dtype = dtype_of(call)
        if s_y is None or z_y is None or s_y.size != 1 or z_y.size != 1 or dtype not in INT8:
            return None
        s_y, z_y = float(s_y.reshape(())), int(z_y.reshape(()))
        value = self._value(call.args[0])
        name = op_name(value)
        if name == "relax.dequantize":
            return self._same_grid(call.args[0], s_y, z_y, dtype)
        if self._is_add(value):
            return self._residual_add(value, s_y, z_y, dtype)
        if name == "relax.reshape" and self._is_add(self._value(value.args[0])):
            # a residual block's output flattened for a Linear head
            out = self._residual_add(self._value(value.args[0]), s_y, z_y, dtype)
            return None if out is None else relax.op.reshape(out, static_shape(value))
        if name == "relax.mean":
            return self._global_mean(value, s_y, z_y, dtype)
        if isinstance(value, relax.TupleGetItem) and int(value.index) == 0:
            bn = self._value(value.tuple_value)
            return self._batch_norm(bn, s_y, z_y, dtype) if op_name(bn) == "relax.nn.batch_norm" \
                else None
        if name == "relax.reshape" and op_name(self._value(value.args[0])) == "relax.mean":
            # the pooled features flattened for a Linear head
            out = self._global_mean(self._value(value.args[0]), s_y, z_y, dtype)
            return None if out is None else relax.op.reshape(out, static_shape(value))
        if name == "relax.concat":
            fields = value.args[0]
            if isinstance(fields, relax.Var):
                fields = self._value(fields)
            if not isinstance(fields, relax.Tuple):
                return None
            acts = [self._activation(f) for f in fields.fields]
            if any(a is None or dtype_of(a[0]) not in INT8 for a in acts):
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
                return relax.op.reshape(q, static_shape(value))
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
        shape = static_shape(value.args[0])
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
        relu = op_name(self._value(value.args[0])) == "relax.nn.relu"
        add = self._value(self._value(value.args[0]).args[0]) if relu else self._value(value.args[0])
        if op_name(add) != "relax.add":
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
        n = static_shape(out)[0]
        mean = self.builder_.emit(relax.op.mean(out, axis=[1, 2], keepdims=True))
        pooled = self.builder_.emit(relax.op.reshape(mean, [n, o, 1, 1]))
        return relax.op.quantize(pooled, relax.const(np.float32(s_y)),
                                 relax.const(z_y, dtype), axis=1, out_dtype=dtype)

    def _batch_norm(self, bn, s_y: float, z_y: int, dtype: str):
        """quantize(batch_norm(dequantize(q)), inference, constant parameters) -> one int8
        kernel with onnxruntime's formula: inv_std = 1 / sqrt(var + eps), new_scale = inv_std *
        gamma, new_bias = beta - mean * new_scale (float32, as its BatchNormalization), then
        x * new_scale + new_bias without FMA (``qaffine_te``); channels-last when q is."""
        act = self._activation(bn.args[0])
        shape = static_shape(bn.args[0])
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
        table = dequantize_table(z_x, s_x, dtype_of(q))
        out = self.builder_.emit(self.builder_.call_te(
            lambda xt, tt, st, bt: qaffine_te(xt, tt, st, bt, 3 if nhwc is not None else 1,
                                              s_y, z_y, dtype),
            nhwc if nhwc is not None else src, relax.const(table), relax.const(new_scale),
            relax.const(new_bias), primfunc_name_hint="qaffine"))
        self.rewritten += 1
        return self._register_nchw(out) if nhwc is not None else out

    def _is_add(self, value) -> bool:
        """``value`` is add(x, y) or relu(add(x, y)), or the same with ONNX Sum's form."""
        if op_name(value) == "relax.nn.relu":
            value = self._value(value.args[0])
        return self._add_operands(value) is not None

    def _add_operands(self, add):
        """(x, y, is_sum) for add(x, y), or for ONNX Sum of two inputs as TVM imports it:
        sum(stack([broadcast_to(x), broadcast_to(y)]), axis 0), same shapes; else None."""
        if op_name(add) == "relax.add":
            return add.args[0], add.args[1], False
        if op_name(add) != "relax.sum" or add.attrs.keepdims or \
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
            if static_shape(x) is None or static_shape(x) != static_shape(f):
                return None
            xs.append(x)
        return xs[0], xs[1], True

    def _residual_add(self, value, s_y: float, z_y: int, dtype: str):
        """quantize(relu?(dequantize(a) + dequantize(b))) -> one int8 elementwise kernel (the
        integer add ``qadd``, channels-last when both operands are): see ``qadd_te``."""
        lo = z_y if op_name(value) == "relax.nn.relu" else QRANGE[dtype][0]
        add = self._value(value.args[0]) if op_name(value) == "relax.nn.relu" else value
        x, y, is_sum = self._add_operands(add)
        acts = [self._activation(v) for v in (x, y)]
        if any(a is None or dtype_of(a[0]) not in INT8 for a in acts):
            return None
        srcs = [self._root(a[0]) for a in acts]
        if static_shape(srcs[0]) != static_shape(srcs[1]):
            return None
        nhwc = [self._nhwc_of(q) for q in srcs]
        channels_last = all(v is not None for v in nhwc)
        a, b = nhwc if channels_last else srcs
        if is_sum:  # onnxruntime's float arithmetic, bit for bit (qsum_te)
            lo, hi = max(lo, QRANGE[dtype][0]), QRANGE[dtype][1]
            tables = [relax.const(dequantize_table(z, s, dtype_of(q))) for q, s, z in acts]
            out = self.builder_.emit(self.builder_.call_te(
                lambda at, bt, ta, tb: qsum_te(at, bt, ta, tb, s_y, z_y, (lo, hi), dtype),
                a, b, *tables, primfunc_name_hint="qsum"))
            self.rewritten += 1
            return self._register_nchw(out) if channels_last else out
        fixed = add_multipliers(acts[0][1] / s_y, acts[1][1] / s_y)
        if fixed is None:
            return None
        (m_a, m_b), shift = fixed
        lo, hi = max(lo, QRANGE[dtype][0]), QRANGE[dtype][1]

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
        if np.float32(s) == np.float32(s_y) and z == z_y and dtype_of(q) == dtype:
            return q
        call = self.builder_.call_te(lambda x: qrescale_te(x, z, s, z_y, s_y, dtype), q,
                                     primfunc_name_hint="qrescale")
        gv = call.args[0]
        self.builder_.update_func(gv, self.builder_.get()[gv].with_attr("op_pattern", OPAQUE))
        return self.builder_.emit(call)
