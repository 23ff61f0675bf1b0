"""The int8 depthwise conv kernel (one filter per channel), channels-last, and its schedule.

``acc[n, y, x, c] = sum_{r, s} X[n, y*sh + r*dh - pt, x*sw + s*dw - pl, c] * W[r, s, c]`` in
int32, the window unrolled, vectorized along the channels (LLVM's widening multiply-adds:
smull/smlal on AArch64, vmull/vmlal on armv7, vpmaddwd-style on x86), and the same epilogue as
the GEMM kernel (``qgemm.py``): int32 bias with the zero-point correction folded in, one float
scale per channel, ReLU/Clip as an integer clamp, requantization to int8/uint8 or float32.
A dot-product instruction does not fit here: the reduction is only R*S long per channel.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

KIND = "depthwise"  # the value of the PrimFunc attribute "edgec.qgemm" for these kernels


def depthwise_te(x, w, bias, scale, *, geom, in_zero: int, out_dtype: str, out_zero: int = 0,
                 clamp: tuple[int, int] | None = None, to_int=None):
    """``x`` NHWC [N, H, W, C] int8/uint8 (``in_zero`` its zero point, what padding reads),
    ``w`` [R, S, C] int8, ``bias`` int32 [C], ``scale`` float32 [C] -> [N, OH, OW, C]."""
    from tvm import te, tirx

    n, h, wd, c = (int(d) for d in x.shape)
    (r, s), (sh, sw), (dh, dw) = geom.kernel, geom.strides, geom.dilation
    pt, pl, pb, pr = geom.padding
    oh = (h + pt + pb - dh * (r - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (s - 1) - 1) // sw + 1
    shift = -128 if str(x.dtype) == "uint8" else 0  # uint8 holds int8 + 128

    def value(nn, y, xx, cc, rr, ss):
        iy, ix = y * sh + rr * dh - pt, xx * sw + ss * dw - pl
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
        v = tirx.if_then_else(inside, x[nn, tirx.max(tirx.min(iy, h - 1), 0),
                                        tirx.max(tirx.min(ix, wd - 1), 0), cc],
                              tirx.const(in_zero, str(x.dtype)))
        return v.astype("int32") + shift

    def window(nn, y, xx, cc):
        # The window as one expression (no reduction axis): the block stays spatial, so the
        # channel loop vectorizes and the R*S products are unrolled.
        total = None
        for rr in range(r):
            for ss in range(s):
                term = value(nn, y, xx, cc, rr, ss) * w[rr, ss, cc].astype("int32")
                total = term if total is None else total + term
        return total

    from toolchain.targets.cpu.qgemm import requantize

    return te.compute((n, oh, ow, c), lambda nn, y, xx, cc: requantize(
        window(nn, y, xx, cc), bias[cc], scale[cc], out_dtype, out_zero, clamp, to_int),
        name="qgemm_out")


def schedule_depthwise(func, threads: int = 1):
    """Vectorize along the channels (16, 8 or 4 at a time); rows parallel with threads."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    out = sch.get_sblock("qgemm_out")
    n, y, x, c = sch.get_loops(out)
    vec = next((v for v in (16, 8, 4) if int(sch.get(c).extent) % v == 0), 1)
    if vec > 1:
        _, c_i = sch.split(c, [None, vec])
        sch.vectorize(c_i)
    if threads > 1:
        sch.parallel(sch.fuse(n, y))
    return sch.mod["main"]
