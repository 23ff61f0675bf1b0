"""PackConvWeights: constant conv and GEMV weights packed at compile time in the tile layout.

Before: ``relax.nn.conv2d(x, W)`` with ``W`` a constant ``[O, I, KH, KW]`` (NCHW/OIHW,
float32, no groups, no dilation). The CPU schedule (schedule.py ``_tile_conv_channels``) reads
the weights of ``vf`` output channels as one vector per reduction step, so it copied ``W`` into
``W'[O/vf, I, KH, KW, vf]`` per channel tile inside every conv call, with scalar copies, into
a workspace buffer (~15% of resnet50's 2048-channel 1x1 conv on arm-a72; the workspace kept
fp32 models off the Cortex-M4).

After: the conv is one ``call_tir`` of a conv kernel (the same loop nest and block names as
TOPI's ``conv2d_nchw``, so fusion and the schedule treat it alike) whose weight argument is the
constant ``W'``, computed here with numpy. ``vf`` comes from ``schedule.conv_tile``, the rule
the schedule uses to pick its register tile, so the layout is the one it reads; a conv the rule
gives no tile keeps its op. The schedule then has no packing loop, and the kernel no
workspace. Results are bit-identical: the same products summed in the same order.

Batch-1 matmuls with a constant ``[K, N]`` weight (classifiers, fully connected layers) are
memory-bound GEMVs: a tile of ``T`` outputs read ``T`` floats from each of ``K`` rows ``N`` apart.
They become a ``gemv_packed`` kernel reading ``W'[N/T, K, T]`` (``schedule.gemv_tile``), one
contiguous stream per tile. Host, 1 thread, kernel CPU time: 4096x4096 12.7 -> 3.8 ms
(onnxruntime 5.8), 2048x1000 357 -> 113 us (onnxruntime 110).
"""

from __future__ import annotations

import logging

import numpy as np

from toolchain.targets.cpu.schedule import conv_tile, gemv_tile, horizontal_stride
from toolchain.targets.cpu.vector import VectorUnit

log = logging.getLogger(__name__)


def pack_oihw(weight: np.ndarray, vf: int) -> np.ndarray:
    """``[O, I, KH, KW]`` -> ``[O/vf, I, KH, KW, vf]``: one channel tile's weights contiguous,
    the ``vf`` channels of one (c, r, s) tap one vector."""
    o, i, kh, kw = weight.shape
    return np.ascontiguousarray(weight.reshape(o // vf, vf, i, kh, kw).transpose(0, 2, 3, 4, 1))


def packed_conv_te(data, packed, strides, padding):
    """TE compute of an NCHW conv reading ``packed`` (``pack_oihw``); ``padding`` is Relax's
    (top, left, bottom, right). Block names as TOPI's: ``pad_temp``, ``conv2d_nchw``."""
    from tvm import te, topi

    n, _, h, w = data.shape
    tiles, channels, kh, kw = packed.shape[:4]
    vf = packed.shape[4]
    top, left, bottom, right = padding
    sh, sw = strides
    pad_temp = topi.nn.pad(data, [0, 0, top, left], [0, 0, bottom, right], name="pad_temp")
    oh = (h + top + bottom - kh) // sh + 1
    ow = (w + left + right - kw) // sw + 1
    rc = te.reduce_axis((0, channels), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    return te.compute(
        (n, tiles * vf, oh, ow),
        lambda nn, ff, yy, xx: te.sum(
            pad_temp[nn, rc, yy * sh + ry, xx * sw + rx] * packed[ff // vf, rc, ry, rx, ff % vf],
            axis=[rc, ry, rx]),
        name="conv2d_nchw", tag="conv2d_nchw")


def pack_kn(weight: np.ndarray, tile: int) -> np.ndarray:
    """``[K, N]`` -> ``[N/tile, K, tile]``: a GEMV's ``tile`` outputs read one contiguous
    stream of weights (``K`` rows of ``tile``) instead of ``tile`` floats from each of ``K``
    rows ``N`` apart."""
    k, n = weight.shape
    return np.ascontiguousarray(weight.reshape(k, n // tile, tile).transpose(1, 0, 2))


def packed_gemv_te(data, packed):
    """TE compute of ``[1, K] x [K, N]`` reading ``packed`` (``pack_kn``); the block is named
    ``gemv_packed``, which the schedule's GEMV rule looks for."""
    from tvm import te

    tiles, depth, tile = (int(d) for d in packed.shape)
    rk = te.reduce_axis((0, depth), name="rk")
    return te.compute(
        (1, tiles * tile),
        lambda i, n: te.sum(data[i, rk] * packed[n // tile, rk, n % tile], axis=rk),
        name="gemv_packed")


def _relax_pass():
    import tvm
    from tvm import relax
    from tvm.ir.expr import GenericConst

    from toolchain.targets.cpu.relax_rewrite import static_shape

    @relax.expr_functor.mutator
    class _Packer(relax.PyExprMutator):
        def __init__(self, mod, lanes: int, by_element: bool):
            super().__init__(mod)
            self.lanes = lanes
            self.by_element = by_element
            self.packed = 0

        def _weight(self, expr):
            if isinstance(expr, relax.Var):
                try:
                    expr = self.lookup_binding(expr)
                except Exception:  # noqa: BLE001  (a parameter: not a constant)
                    return None
            return expr.value.numpy() if isinstance(expr, GenericConst) else None

        def _rewrite(self, call):
            a = call.attrs
            if (a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW"
                    or int(a.groups) != 1 or any(int(d) != 1 for d in a.dilation)
                    or str(a.out_dtype) not in ("None", "", "float32")):
                return None
            x_shape, out_shape = static_shape(call.args[0]), static_shape(call)
            weight = self._weight(call.args[1])
            if (x_shape is None or out_shape is None or weight is None or weight.ndim != 4
                    or weight.dtype != np.float32
                    or str(call.args[0].ty.dtype) != "float32"):
                return None
            padding = [int(p) for p in a.padding]
            strides = [int(s) for s in a.strides]
            kh, kw = weight.shape[2:]
            width = out_shape[3]
            stride = horizontal_stride(x_shape[3] + padding[1] + padding[3], kw, width)
            vf, _ = conv_tile(weight.shape[0], width, (kh, kw), stride, self.lanes,
                              self.by_element)
            if not vf:
                return None
            packed = relax.const(pack_oihw(weight, vf))
            self.packed += 1
            return self.builder_.call_te(
                packed_conv_te, call.args[0], packed, strides, padding,
                primfunc_name_hint="conv2d")

        def _rewrite_gemv(self, call):
            """Batch-1 ``x[1, K] @ W[K, N]`` with a constant float32 ``W``."""
            x_shape = static_shape(call.args[0])
            weight = self._weight(call.args[1])
            if (x_shape is None or len(x_shape) != 2 or x_shape[0] != 1 or weight is None
                    or weight.ndim != 2 or weight.dtype != np.float32
                    or str(call.args[0].ty.dtype) != "float32"
                    or str(call.attrs.out_dtype) not in ("None", "", "float32")):
                return None
            tile, _ = gemv_tile(weight.shape[1], self.lanes)
            if not tile:
                return None
            self.packed += 1
            return self.builder_.call_te(packed_gemv_te, call.args[0],
                                         relax.const(pack_kn(weight, tile)),
                                         primfunc_name_hint="matmul")

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            rewrite = {"relax.nn.conv2d": self._rewrite,
                       "relax.matmul": self._rewrite_gemv}.get(getattr(call.op, "name", ""))
            if rewrite is not None:
                new = rewrite(call)
                if new is not None:
                    return new
            return call

    @tvm.transform.module_pass(opt_level=0, name="PackConvWeights")
    class PackConvWeights:
        """Rewrite constant-weight convs to read weights packed at compile time (module doc)."""

        def __init__(self, vector: VectorUnit):
            self.vector = vector

        def transform_module(self, mod, ctx):
            from toolchain.targets.cpu.relax_rewrite import rewrite_functions

            return rewrite_functions(
                mod, lambda m: _Packer(m, self.vector.lanes, self.vector.fma_by_element),
                lambda packer: packer.packed, "conv and GEMV weights packed at compile time",
                log)

    return PackConvWeights


def PackConvWeights(target, vector: VectorUnit | None = None):  # noqa: N802  (a pass, by its name)
    """The pass for ``target``'s vector unit (``vector``, the device's facts; None: LLVM's)."""
    return _relax_pass()(vector or VectorUnit.of_target(target))
