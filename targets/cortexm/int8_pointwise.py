"""The int8 pointwise conv (1x1) and Linear GEMM for Cortex-M4/M7 (Armv7E-M DSP), by hand.

The generic GEMM with the SMLAD tensorize (int8_dot.py) sign-extends the weight bytes at every
step and LLVM spills its tile's registers (about 2.2 instructions per multiply-accumulate on the
M7). This kernel arranges the weights at compile time instead:

- the weights are sign-extended to int16 and packed two per word in the order ``sxtb16`` splits
  an activation word: for input channels 4g..4g+3 and output channel o, one word holds
  (w[o, 4g], w[o, 4g+2]) and the next (w[o, 4g+1], w[o, 4g+3]), so one ``ldr`` gives the two
  int16 weights of one ``smlad``;
- the 4 activation bytes of a pixel are one word load (channels-last input), widened once by
  two ``sxtb16`` (bytes 0, 2 and, rotated by 8, bytes 1, 3) and shared by 4 output channels;
- 1 pixel x 4 output channels: 4 accumulators in registers for the whole reduction (it is
  unrolled into let bindings, so nothing goes to memory but the weight and activation loads),
  then the epilogue of every integer kernel (``qgemm.requantize``).

Per 16 products: 1 activation load, 2 ``sxtb16``, 8 weight loads, 8 ``smlad``. uint8 inputs
(int8 + 128) flip the sign bits of the word (one ``eor``); the zero-point correction is in the
bias as for the GEMM. Other shapes (channels not a multiple of 4, padded or strided-with-
padding 1x1 convs, long reductions) keep the generic GEMM.
"""

from __future__ import annotations

import numpy as np

KIND = "pointwise-smlad"  # the kernel's "edgec.qgemm" attribute; it comes scheduled
MAX_K = 512  # the reduction is unrolled: longer ones keep the generic GEMM

_FLIP = -0x7F7F7F80  # 0x80808080 as int32: flips each byte's sign bit (uint8 -> int8 - 128)


def pack_weights(w_ok: np.ndarray) -> np.ndarray:
    """[O, K] int8 -> [O / 4, K / 4, 4, 2] int32: for output channels 4q + i and input
    channels 4g..4g+3, word [q, g, i, 0] = (w[4g], w[4g+2]) and [q, g, i, 1] = (w[4g+1],
    w[4g+3]) as the (low, high) int16 halves."""
    o, k = w_ok.shape
    w = w_ok.astype(np.int32).reshape(o // 4, 4, k // 4, 4).transpose(0, 2, 1, 3)
    even = (w[..., 0] & 0xFFFF) | (w[..., 2] << 16)
    odd = (w[..., 1] & 0xFFFF) | (w[..., 3] << 16)
    return np.ascontiguousarray(np.stack([even, odd], axis=-1).astype(np.int32))


def supports(x_shape, x_dtype: str, geom, out_channels: int) -> bool:
    """A 1x1 conv without padding (any stride) or a matmul, on channels-last int8/uint8, with
    input and output channels multiples of 4."""
    return (len(x_shape) == 4 and x_dtype in ("int8", "uint8")
            and tuple(geom.kernel) == (1, 1) and not any(geom.padding)
            and int(x_shape[3]) % 4 == 0 and int(x_shape[3]) <= MAX_K
            and out_channels % 4 == 0)


def pointwise_smlad(x_shape, x_dtype: str, geom, out_channels: int, *, out_dtype: str,
                    out_zero: int = 0, clamp: tuple[int, int] | None = None, to_int=None):
    """The PrimFunc ``(X [N, H, W, K], W2 [O/4, K/4, 4, 2] int32, bias int32 [O],
    scale float32 [O], Y [N, OH, OW, O])`` (``W2`` from ``pack_weights``)."""
    from tvm import tirx
    from tvm.script import tirx as T

    from toolchain.targets.cpu.qgemm import requantize

    n, h, wd, k = (int(d) for d in x_shape)
    sh, sw = geom.strides
    oh, ow = (h - 1) // sh + 1, (wd - 1) // sw + 1
    o, k4 = int(out_channels), k // 4
    uint8 = x_dtype == "uint8"

    def arm(name, *args):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype="int32")

    def ror8(v):
        u = T.reinterpret(v, dtype="uint32")
        return T.reinterpret(T.shift_right(u, T.uint32(8)) | T.shift_left(u, T.uint32(24)),
                             dtype="int32")

    X = tirx.decl_buffer((n, h, wd, k), x_dtype, "X")
    W2 = tirx.decl_buffer((o // 4, k4, 4, 2), "int32", "W2")
    B = tirx.decl_buffer((o,), "int32", "B")
    S = tirx.decl_buffer((o,), "float32", "S")
    Y = tirx.decl_buffer((n, oh, ow, o), out_dtype, "Y")
    nn, y, x, q = (tirx.Var(v, "int32") for v in ("nn", "y", "x", "q"))
    lets = []

    def let(name, value):
        var = tirx.Var(name, "int32")
        lets.append(tirx.Bind(var, value))
        return var

    acc = [B[q * 4 + i] for i in range(4)]
    for g in range(k4):
        raw = T.reinterpret(X.vload([nn, y * sh, x * sw, g * 4], f"{x_dtype}x4"), dtype="int32")
        if uint8:
            raw = raw ^ T.int32(_FLIP)
        word = let(f"x{g}", raw)
        even = let(f"e{g}", arm("llvm.arm.sxtb16", word))
        odd = let(f"o{g}", arm("llvm.arm.sxtb16", ror8(word)))
        for i in range(4):
            acc[i] = let(f"a{g}_{i}", arm("llvm.arm.smlad", even, W2[q, g, i, 0],
                                          arm("llvm.arm.smlad", odd, W2[q, g, i, 1], acc[i])))
    body = tirx.SeqStmt(lets + [
        tirx.BufferStore(Y, requantize(acc[i], T.int32(0), S[q * 4 + i], out_dtype, out_zero,
                                       clamp, to_int), [nn, y, x, q * 4 + i])
        for i in range(4)])
    for var, extent in reversed(list(zip((nn, y, x, q), (n, oh, ow, o // 4)))):
        body = tirx.For(var, 0, extent, tirx.ForKind.SERIAL, body)
    func = tirx.PrimFunc([X, W2, B, S, Y], body)
    return func.with_attrs({"tir.noalias": True, "op_pattern": 8, "edgec.qgemm": KIND,
                            "edgec.scheduled": True})
