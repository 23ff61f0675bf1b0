"""The int8 elementwise and pooling kernels of the integer lowering (integer.py), in TE.

- ``qadd_te``: a residual add of two int8 tensors on their own grids, onto the output's grid,
  in int32 fixed point (no float): ``M = round(s / s_y * 2**S)`` per operand, an exactly
  rounded (half to even) shift, the zero point and a clamp (ReLU folded in);
- ``qsum_te``: the same add written as ONNX Sum, which onnxruntime keeps in float at every
  optimization level: each operand dequantized through a 256-entry float32 table (onnxruntime's
  DequantizeLinear products, bit for bit), one float add, QuantizeLinear's division and
  round half to even, so the codes are onnxruntime's;
- ``qaffine_te``: an inference BatchNormalization between a dequantize and a quantize, with
  onnxruntime's float32 formula and roundings (x * new_scale + new_bias, no FMA);
- ``qmean_te``: global average pooling, one int32 sum per channel requantized once (the
  GEMM's epilogue, ``qgemm.requantize``).
"""

from __future__ import annotations

import numpy as np

from toolchain.targets.cpu.qgemm import requantize


def add_multipliers(m_a: float, m_b: float) -> tuple[tuple[int, int], int] | None:
    """Fixed-point forms of the two rescale factors of an int8 add: (M_a, M_b), S with
    M = round(m * 2**S), S as large as keeps 255 * (|M_a| + |M_b|) + 2**S within int32 (at
    most 24; the error of M is below 2**-S * 255 / 2 output steps). None if S < 8."""
    total = 255.0 * (abs(m_a) + abs(m_b))
    if not total > 0:
        return None
    shift = min(24, int(np.floor(np.log2((2 ** 31 - 2 ** 25) / total))))
    if shift < 8:
        return None
    return (int(round(m_a * 2 ** shift)), int(round(m_b * 2 ** shift))), shift


def qadd_te(a, b, za: tuple[int, int], zb: tuple[int, int], shift: int, z_y: int,
            clamp: tuple[int, int], out_dtype: str):
    """TE: the int8 add ``round_half_even(((a - z_a) M_a + (b - z_b) M_b) / 2**S) + z_y``,
    clamped, in int32 arithmetic (``za``/``zb``: (zero point, M)). The rounding is exact on the
    fixed-point sum: a tie goes to the even value, as onnxruntime's QuantizeLinear does."""
    from tvm import te, tirx

    (z_a, m_a), (z_b, m_b) = za, zb
    half = 1 << (shift - 1)

    def value(*i):
        acc = ((a(*i).astype("int32") - z_a) * m_a + (b(*i).astype("int32") - z_b) * m_b)
        odd = tirx.shift_right(acc, shift) & 1
        q = tirx.shift_right(acc + (half - 1) + odd, shift) + z_y
        return tirx.max(tirx.min(q, clamp[1]), clamp[0]).astype(out_dtype)

    return te.compute(a.shape, value, name="qadd")


def dequantize_table(zero: int, scale: float, dtype: str) -> np.ndarray:
    """float32 ``(q - zero) * scale`` for every code q of ``dtype`` (index q + 128 for int8)."""
    lo = -128 if dtype == "int8" else 0
    return (np.arange(lo, lo + 256) - zero).astype(np.float32) * np.float32(scale)


def qsum_te(a, b, table_a, table_b, s_y: float, z_y: int, clamp: tuple[int, int],
            out_dtype: str):
    """TE: ``round_half_even((table_a[a] + table_b[b]) / s_y) + z_y``, clamped: the float32
    operations of onnxruntime's DequantizeLinear, Sum, (Relu), QuantizeLinear in their order.
    The products come from the tables: written as multiplies, LLVM contracts one of them with
    the add into an FMA (one rounding fewer), which rounds a value within ~1e-6 of a .5 the
    other way (resnet50's QDQ model: 1 element in 401408 at res3's last Sum, then hundreds of
    thousands of codes through the layers after it)."""
    from tvm import te, tirx

    def code(x, i):
        v = x(*i).astype("int32")
        return v + 128 if x.dtype == "int8" else v

    def value(*i):
        v = (table_a[code(a, i)] + table_b[code(b, i)]) / tirx.const(float(np.float32(s_y)),
                                                                      "float32")
        v = tirx.max(tirx.min(v, float(clamp[1] - z_y)), float(clamp[0] - z_y))  # int32-safe
        return (tirx.round(v).astype("int32") + z_y).astype(out_dtype)

    return te.compute(a.shape, value, name="qsum")


def qaffine_te(x, table, scale, shift, axis: int, s_y: float, z_y: int, out_dtype: str):
    """TE: ``round_half_even(f32(f32(table[x] * scale[c]) + shift[c]) / s_y) + z_y``, clamped,
    c the index along ``axis``: a per-channel ``x * scale + shift`` between a dequantize and a
    quantize (an inference BatchNormalization) with onnxruntime's float32 roundings.

    TVM builds LLVM with FP contraction on, so a float32 multiply-add becomes one FMA (one
    rounding fewer). The product is therefore rounded to float32 on its own, then rebuilt
    from its bits as ``(M * 2**(E - 127)) * 2**-23`` (M the signed significand, E the biased
    exponent, subnormals with E = 1): both multiplies are exact (for |product| < 2**105), so
    an FMA of the last one with the add rounds once, as the separate add does. float32 and
    integer operations only, no float64: on a single-precision FPU (Cortex-M4) LLVM calls
    libgcc's float64 helpers (__muldf3, ...) with the hard-float convention, and they take
    core registers."""
    from tvm import te, tirx

    lo, hi = (-128, 127) if out_dtype == "int8" else (0, 255)

    def exact(p):
        """float32 ``p`` as a product of exact factors, opaque to FP contraction."""
        bits = tirx.reinterpret("int32", p)
        e = tirx.shift_right(bits, 23) & 0xFF
        m = bits & 0x7FFFFF
        m = tirx.Select(e == 0, m, m | 0x800000)
        m = tirx.Select(bits < 0, -m, m)
        pow2 = tirx.reinterpret("float32", tirx.shift_left(tirx.max(e, 1), 23))  # 2**(E - 127)
        # in this order: LLVM turns int -> float then * 2**-23 into MVE's fixed-point vcvt,
        # which gave wrong values on the M55 (qemu 7.2)
        return m.astype("float32") * pow2 * tirx.const(2.0 ** -23, "float32")

    def value(*i):
        v = x(*i).astype("int32")
        c = i[axis]
        p = table[v + 128 if x.dtype == "int8" else v] * scale[c]  # rounded to float32 once
        y = (exact(p) + shift[c]) / tirx.const(float(np.float32(s_y)), "float32")
        y = tirx.max(tirx.min(y, float(hi - z_y)), float(lo - z_y))
        return (tirx.round(y).astype("int32") + z_y).astype(out_dtype)

    return te.compute(x.shape, value, name="qaffine")


def qmean_te(x, channels_last: bool, z_x: int, scale, z_y: int, out_dtype: str, to_int=None):
    """TE: [N, C, 1, 1] = requantize(sum over H, W of x - H W z_x, scale) with ``scale`` =
    s_x / (H W s_y); ``x`` NHWC when ``channels_last``, else NCHW."""
    from tvm import te

    if channels_last:
        n, h, w, c = (int(d) for d in x.shape)
    else:
        n, c, h, w = (int(d) for d in x.shape)
    rh, rw = te.reduce_axis((0, h), name="rh"), te.reduce_axis((0, w), name="rw")

    def read(nn, cc):
        v = x[nn, rh, rw, cc] if channels_last else x[nn, cc, rh, rw]
        return v.astype("int32")

    total = te.compute((n, c), lambda nn, cc: te.sum(read(nn, cc), axis=[rh, rw]),
                       name="qmean_sum")
    return te.compute((n, c, 1, 1), lambda nn, cc, i, j: requantize(
        total[nn, cc], -h * w * z_x, scale, out_dtype, z_y, None, to_int), name="qmean")


def qrescale_te(x, z: int, s: float, z_y: int, s_y: float, out_dtype: str):
    """TE: int8 ``x`` on grid (s, z) moved to (s_y, z_y) as onnxruntime's DequantizeLinear ->
    QuantizeLinear (and its QLinearConcat table) compute it: ``clamp(round_half_even(((x - z) *
    s) / s_y) + z_y)`` in float32 (the product,
    then the quotient: no multiply-add for LLVM to contract into an FMA). The clamp is made
    on the float quotient against integer bounds, which commutes with the rounding."""
    from tvm import te, tirx

    lo, hi = {"int8": (-128, 127), "uint8": (0, 255)}[out_dtype]
    scale = tirx.const(float(np.float32(s)), "float32")
    div = tirx.const(float(np.float32(s_y)), "float32")

    def value(*i):
        v = (x(*i).astype("int32") - z).astype("float32") * scale / div
        v = tirx.max(tirx.min(v, float(hi - z_y)), float(lo - z_y))
        return (tirx.round(v).astype("int32") + z_y).astype(out_dtype)

    return te.compute(x.shape, value, name="qrescale")
