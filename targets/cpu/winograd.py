"""Winograd F(2x2, 3x3) for fp32 3x3 stride-1 convs: 2.25x fewer multiplies in the GEMM.

Before: ``relax.nn.conv2d(x, W)``, NCHW/OIHW, 3x3, stride 1, dilation 1, one group, float32,
``W`` a constant with enough input and output channels (``MIN_CHANNELS``).

After: three kernels (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"):

- ``U = G g G^T`` per (output, input) channel, computed here with numpy: a constant
  ``U[K, 16, C]``, nothing at run time;
- ``winograd_input``: the padded input cut into overlapping 4x4 tiles (stride 2), each
  ``V = B^T d B`` with adds only, into ``V[16, C, T]`` (``T`` tiles, padded to the vector
  width with zero tiles so the GEMM needs no tail);
- ``winograd_gemm``: 16 independent GEMMs ``M[k, p, t] = sum_c U[k, p, c] V[p, c, t]``, a
  reduction the CPU schedule register-tiles (tiles vectorized, output channels blocked);
- ``winograd_output``: ``Y = A^T M A`` per tile, cropped to the conv's output; the bias and
  ReLU after the conv fuse into it (FuseOps: injective + elementwise).

Per output and input channel the GEMM takes 16/4 = 4 multiply-adds instead of 9; the input and
output transforms cost adds per tile and channel, so it pays only with enough channels. Float
rounding differs from the direct conv (the transforms add and subtract), within float
tolerance against onnxruntime (squeezenet arm-a72: max rel error 2.4e-05 of the output range).

Where it pays (measured; ``--pipeline cpu-nowinograd`` keeps every conv direct): AArch64
targets (fma by element, 32 vector registers), in and out channels >= 32. One conv + bias +
ReLU, arm-a72 instructions per inference, direct -> Winograd (``edgec run OUT --profile``):
64->64 at 56x56 35.19M -> 30.39M, 32->128 at 27x27 7.98M -> 7.23M, 64->256 at 13x13
8.21M -> 6.39M, but 16->64 at 55x55 8.75M -> 9.59M (transforms dominate: kept direct).
Host (AVX-512, tiles padded to 16 lanes) measured slower (64->64 at 56x56 2255 -> 2547 us
whole inference, 64->256 at 13x13 497 -> 885 us): off on the host, as on armv7.
"""

from __future__ import annotations

import logging

import numpy as np

from toolchain.targets.cpu.vector import VectorUnit

log = logging.getLogger(__name__)

MIN_CHANNELS = 32  # input and output channels below this keep the direct conv (measured)

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# B^T rows as two terms: row a = d[_I1[a]] + _S2[a] * d[_I2[a]]
_I1, _I2, _S2 = (0, 2, 2, 1), (2, 1, 1, 3), (-1.0, 1.0, -1.0, -1.0)


def transform_weight(weight: np.ndarray) -> np.ndarray:
    """``[K, C, 3, 3]`` -> ``U[4, 4, C, K]``, ``U[a, b, c, k] = (G g G^T)[a, b]`` (float64 math)."""
    u = np.einsum("ai,kcij,bj->abck", _G, weight.astype(np.float64), _G)
    return np.ascontiguousarray(u.astype(np.float32))


def tile_grid(height: int, width: int, lanes: int) -> tuple[int, int]:
    """(tile rows, tile columns) for an output of ``height x width``; the columns padded to a
    multiple of ``lanes`` (zero tiles) so the kernels' vectors need no tail."""
    tw = -(-width // 2)
    return -(-height // 2), -(-tw // lanes) * lanes


def _pick(a, values):
    from tvm import tirx

    out = values[-1]
    for i in range(len(values) - 2, -1, -1):
        out = tirx.Select(a == i, values[i], out)
    return out


def split_te(data, padding, rows: int, cols: int):
    """``S[c, parity, y, q] = pad(x)[c, y, 2q + parity]``: the padded input's even and odd
    columns apart, so every tile load after it is contiguous along the tiles."""
    from tvm import te, tirx

    _, channels, h, w = (int(d) for d in data.shape)
    top, left = int(padding[0]), int(padding[1])

    def value(c, par, y, q):
        yy, xx = y - top, 2 * q + par - left
        inside = tirx.all(yy >= 0, yy < h, xx >= 0, xx < w)
        return tirx.if_then_else(inside, data[0, c, yy, xx], tirx.const(0.0, "float32"))

    return te.compute((channels, 2, 2 * rows + 2, cols + 1), value, name="winograd_split")


def input_te(split, rows: int, cols: int):
    """``V[a, b, c, ty, tx] = (B^T d B)[a, b]`` of the 4x4 tile at (2 ty, 2 tx)."""
    from tvm import te, tirx

    channels = int(split.shape[0])
    i32 = [tirx.const(v, "int32") for v in range(4)]

    def value(a, b, c, ty, tx):
        i1, i2 = _pick(a, [i32[v] for v in _I1]), _pick(a, [i32[v] for v in _I2])
        j1, j2 = _pick(b, [i32[v] for v in _I1]), _pick(b, [i32[v] for v in _I2])
        sa = _pick(a, [tirx.const(v, "float32") for v in _S2])
        sb = _pick(b, [tirx.const(v, "float32") for v in _S2])

        def d(i, j):
            return split[c, j % 2, 2 * ty + i, tx + j // 2]

        def col(j):
            return d(i1, j) + sa * d(i2, j)

        return col(j1) + sb * col(j2)

    return te.compute((4, 4, channels, rows, cols), value, name="winograd_input")


def gemm_te(u, v):
    """``M[k, a, b, ty, tx] = sum_c U[a, b, c, k] V[a, b, c, ty, tx]``."""
    from tvm import te

    _, _, c, k = (int(d) for d in u.shape)
    rows, cols = int(v.shape[3]), int(v.shape[4])
    rc = te.reduce_axis((0, c), name="rc")
    return te.compute((k, 4, 4, rows, cols),
                      lambda o, a, b, ty, tx: te.sum(u[a, b, rc, o] * v[a, b, rc, ty, tx],
                                                     axis=rc), name="winograd_gemm")


def output_te(m):
    """``O[k, ty, u, v, tx] = (A^T M A)[u, v]`` of tile (ty, tx)."""
    from tvm import te, tirx

    k, _, _, rows, cols = (int(d) for d in m.shape)

    def value(o, ty, u, v, tx):
        def r(b):  # row u of A^T M, column b: u=0: m0+m1+m2, u=1: m1-m2-m3
            mm = [m[o, a, b, ty, tx] for a in range(4)]
            return mm[1] + tirx.Select(u == 0, mm[0] + mm[2], -mm[2] - mm[3])

        return r(1) + tirx.Select(v == 0, r(0) + r(2), -r(2) - r(3))

    return te.compute((k, rows, 2, 2, cols), value, name="winograd_output")


def interleave_te(o, height: int, width: int):
    """``Y[1, k, y, x] = O[k, y / 2, y % 2, x % 2, x / 2]``: the conv's output, cropped."""
    from tvm import te

    k = int(o.shape[0])
    return te.compute((1, k, height, width),
                      lambda n, c, y, x: o[c, y // 2, y % 2, x % 2, x // 2],
                      name="winograd_interleave")


def gemm_tile(channels: int, cols: int, lanes: int, wide: bool) -> tuple[int, int]:
    """(output channels, tiles) of the GEMM's register tile: tiles in one or two vectors,
    channels so that the accumulators take 16 of 32 vector registers (``wide``: AArch64,
    AVX-512) or 8 of 16 (AVX2, armv7)."""
    vx = 2 * lanes if cols % (2 * lanes) == 0 and lanes < 16 else lanes
    regs = vx // lanes
    budget = 16 if wide else 8
    vk = next((f for f in (16, 8, 4, 2) if channels % f == 0 and f * regs <= budget), 1)
    return vk, vx


def schedule_gemm(func, lanes: int, wide: bool, threads: int):
    """The GEMM's register tile (``gemm_tile``): accumulators in registers across the
    reduction over input channels, tiles vectorized, channels unrolled; the outer channel
    tiles parallel with ``threads`` > 1."""
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    block = sch.get_sblock("winograd_gemm")
    k, a, b, ty, tx, rc = sch.get_loops(block)
    vk, vx = gemm_tile(int(sch.get(k).extent), int(sch.get(tx).extent), lanes, wide)
    ko, ki = sch.split(k, [None, vk])
    txo, txi = sch.split(tx, [None, vx])
    unroll = 4 if int(sch.get(rc).extent) % 4 == 0 else 1
    rco, rci = sch.split(rc, [None, unroll])
    sch.reorder(ko, a, b, ty, txo, rco, rci, ki, txi)
    cache = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(cache, txo, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(cache)[-1])
    sch.unroll(ki)
    sch.unroll(rci)
    sch.vectorize(txi)
    if threads > 1:
        sch.parallel(ko)
    init = sch.decompose_reduction(block, rco)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"].with_attr("edgec.scheduled", True)


def qualifies(call, x_shape, out_shape, weight) -> bool:
    """The convs this rewrite takes (module doc)."""
    a = call.attrs
    return (a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW"
            and int(a.groups) == 1 and all(int(d) == 1 for d in a.dilation)
            and all(int(s) == 1 for s in a.strides)
            and str(a.out_dtype) in ("None", "", "float32")
            and x_shape is not None and out_shape is not None and len(x_shape) == 4
            and x_shape[0] == 1 and weight is not None and weight.ndim == 4
            and weight.dtype == np.float32 and tuple(weight.shape[2:]) == (3, 3)
            and weight.shape[0] >= MIN_CHANNELS and weight.shape[1] >= MIN_CHANNELS
            and str(call.args[0].ty.dtype) == "float32")


def bb_call(bb, te_func, *args, name: str):
    """Emit ``call_te(te_func, *args)`` as a bound variable."""
    return bb.emit(bb.call_te(te_func, *args, primfunc_name_hint=name))


def _relax_pass():
    import tvm
    from tvm import relax

    from toolchain.targets.cpu.relax_rewrite import bound_value, const_value, static_shape

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, mod, lanes: int, wide: bool, threads: int, by_element: bool):
            super().__init__(mod)
            self.wide_fma = by_element
            self.lanes = lanes
            self.wide = wide
            self.threads = threads
            self.rewritten = 0

        def _rewrite(self, call):
            w = bound_value(self, call.args[1])
            weight = const_value(w) if w is not None else None
            x_shape, out_shape = static_shape(call.args[0]), static_shape(call)
            if not self.wide_fma or not qualifies(call, x_shape, out_shape, weight):
                return None
            height, width = out_shape[2:]
            rows, cols = tile_grid(height, width, self.lanes)
            pad = list(call.attrs.padding)
            sp = self._opaque(bb_call(self.builder_, split_te, call.args[0], pad, rows, cols,
                                      name="winograd_split"))
            v = bb_call(self.builder_, input_te, sp, rows, cols, name="winograd_input")
            m = self._gemm(relax.const(transform_weight(weight)), v)
            o = self._opaque(bb_call(self.builder_, output_te, m, name="winograd_output"))
            self.rewritten += 1
            return self.builder_.call_te(interleave_te, o, height, width,
                                         primfunc_name_hint="winograd_interleave")

        def _gemm(self, u, v):
            from tvm import te

            tu = te.placeholder([int(d) for d in u.ty.shape], "float32", name="u")
            tv = te.placeholder([int(d.value) for d in v.ty.shape], "float32", name="v")
            out = gemm_te(tu, tv)
            func = schedule_gemm(te.create_prim_func([tu, tv, out]), self.lanes, self.wide,
                                 self.threads)
            gv = self.builder_.add_func(func.with_attr("op_pattern", 8), "winograd_gemm")
            return self.builder_.emit(relax.call_tir(
                gv, [u, v], relax.TensorType([int(d) for d in out.shape], "float32")))

        def _opaque(self, var):
            """Keep the kernel behind ``var`` out of FuseOps' groups (op_pattern kOpaque), so
            the schedule does not inline it back into its consumer (the strided loads the
            separate kernel exists to pay once)."""
            call = self.lookup_binding(var)
            gv = call.args[0]
            func = self.builder_.get()[gv]
            self.builder_.update_func(gv, func.with_attr("op_pattern", 8))
            return var

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if getattr(call.op, "name", "") == "relax.nn.conv2d":
                new = self._rewrite(call)
                if new is not None:
                    return new
            return call

    @tvm.transform.module_pass(opt_level=0, name="WinogradConv")
    class WinogradConv:
        """Rewrite qualifying 3x3 convs to Winograd F(2x2, 3x3) kernels (module doc)."""

        def __init__(self, vector: VectorUnit, threads: int):
            self.vector = vector
            self.threads = threads

        def transform_module(self, mod, ctx):
            from toolchain.targets.cpu.relax_rewrite import rewrite_functions

            return rewrite_functions(mod, lambda m: _Rewriter(
                m, self.vector.lanes, self.vector.fma_by_element or self.vector.lanes == 16,
                self.threads, self.vector.fma_by_element),
                                     lambda r: r.rewritten, "3x3 convs as Winograd F(2x2,3x3)",
                                     log)

    return WinogradConv


def WinogradConv(target, vector: VectorUnit | None = None,  # noqa: N802  (a pass, by its name)
                 threads: int = 1):
    """The pass for ``target``'s vector unit (``vector``: the device's facts; None: LLVM's)."""
    return _relax_pass()(vector or VectorUnit.of_target(target), threads)
