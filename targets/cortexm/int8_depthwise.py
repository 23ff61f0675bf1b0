"""The int8 depthwise conv for Cortex-M4/M7 (Armv7E-M DSP): SMLAD on pairs of window taps.

The reduction of a depthwise conv is only the window, per channel, so the GEMM's SMLAD step
(int8_dot.py) does not fit: SMLAD adds two 16 x 16-bit products into one accumulator, and the
two products must belong to the same channel. This kernel pairs two taps of the window:

- the 4 channel bytes of a pixel are one word load (channels-last input); ``sxtb16`` splits it
  into (c0, c2) and, rotated by 8, (c1, c3) as int16 halves;
- for taps t0 and t1 of a pair, ``pkhbt``/``pkhtb`` join the halves of one channel,
  (x[t0, c], x[t1, c]), and one ``smlad`` adds both products with the weight word
  (w[t0, c], w[t1, c]), packed once at compile time (an odd last tap pairs with a zero weight);
- 4 accumulators (4 channels) stay in registers for the whole window, then the same epilogue as
  every integer kernel (``qgemm.requantize``): int32 bias with the zero-point correction
  folded in, one float scale per channel, ReLU/Clip as an integer clamp.

About 2 instructions per multiply-accumulate where LLVM's scalar form (ldrsb, ldrsb, mla per
product, plus the padding selects) takes 3-4. Padding reads the input's zero point (its
correction is in the bias, as for the GEMM); the tap's bounds test does not depend on the
channel, so LLVM hoists it out of the channel loop. uint8 inputs (int8 + 128) flip the sign
bits of the word (one ``eor``). Channels not a multiple of 4 keep the generic kernel
(targets/cpu/qdepthwise.py).
"""

from __future__ import annotations

import numpy as np

KIND = "depthwise-smlad"  # the kernel's "edgec.qgemm" attribute; it comes scheduled

_FLIP = -0x7F7F7F80  # 0x80808080 as int32: flips each byte's sign bit (uint8 -> int8 - 128)


def _word(v: int) -> int:
    """The byte ``v`` (int8 view) in all four bytes of a word, as a signed int32."""
    w = (v & 0xFF) * 0x01010101
    return w - (1 << 32) if w >= 1 << 31 else w


def pack_weights(w_rsc: np.ndarray) -> np.ndarray:
    """[R, S, C] int8 -> [ceil(R*S / 2), C] int32: taps (2p, 2p+1) of channel c as the
    (low, high) int16 halves of word [p, c]."""
    r, s, c = w_rsc.shape
    taps = w_rsc.reshape(r * s, c).astype(np.int32)
    if taps.shape[0] % 2:
        taps = np.concatenate([taps, np.zeros((1, c), np.int32)])
    low, high = taps[0::2], taps[1::2]
    return ((low & 0xFFFF) | (high << 16)).astype(np.int32)


def supports(x_shape, x_dtype: str) -> bool:
    return len(x_shape) == 4 and int(x_shape[3]) % 4 == 0 and x_dtype in ("int8", "uint8")


def depthwise_smlad(x_shape, x_dtype: str, geom, *, in_zero: int, out_dtype: str,
                    out_zero: int = 0, clamp: tuple[int, int] | None = None,
                    to_int=None):
    """The PrimFunc ``(X [N, H, W, C], W2 [P, C] int32, bias int32 [C], scale float32 [C],
    Y [N, OH, OW, C])`` (``W2`` from ``pack_weights``)."""
    from tvm import tirx
    from tvm.script import tirx as T

    from toolchain.targets.cpu.qgemm import requantize

    n, h, wd, c = (int(d) for d in x_shape)
    (r, s), (sh, sw), (dh, dw) = geom.kernel, geom.strides, geom.dilation
    pt, pl, pb, pr = geom.padding
    oh = (h + pt + pb - dh * (r - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (s - 1) - 1) // sw + 1
    taps = r * s
    pairs = (taps + 1) // 2
    c4 = c // 4
    uint8 = x_dtype == "uint8"
    pad_word = _word(in_zero - 128 if uint8 else in_zero)

    def arm(name, *args):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype="int32")

    def u32(v):
        return T.reinterpret(v, dtype="uint32")

    def i32(v):
        return T.reinterpret(v, dtype="int32")

    def ror8(v):
        return i32(T.shift_right(u32(v), T.uint32(8)) | T.shift_left(u32(v), T.uint32(24)))

    def pack_low(a, b):  # (a.lo, b.lo): pkhbt a, b, lsl #16
        return i32((u32(a) & T.uint32(0xFFFF)) | T.shift_left(u32(b), T.uint32(16)))

    def pack_high(a, b):  # (a.hi, b.hi): pkhtb b, a, asr #16
        return i32((u32(b) & T.uint32(0xFFFF0000)) | T.shift_right(u32(a), T.uint32(16)))

    def word(X, nn, y, x, tap, cc):
        iy = y * sh + (tap // s) * dh - pt
        ix = x * sw + (tap % s) * dw - pl
        conds = [c for c in (iy >= 0 if (tap // s) * dh < pt else None,
                             iy < h if (oh - 1) * sh + (tap // s) * dh - pt >= h else None,
                             ix >= 0 if (tap % s) * dw < pl else None,
                             ix < wd if (ow - 1) * sw + (tap % s) * dw - pl >= wd else None)
                 if c is not None]
        raw = i32(X.vload([nn, tirx.max(tirx.min(iy, h - 1), 0),
                           tirx.max(tirx.min(ix, wd - 1), 0), cc * 4], f"{x_dtype}x4"))
        if uint8:
            raw = raw ^ T.int32(_FLIP)
        if not conds:
            return raw
        return tirx.if_then_else(tirx.all(*conds), raw, T.int32(pad_word))

    def out(acc, scale):
        return requantize(acc, T.int32(0), scale, out_dtype, out_zero, clamp, to_int)

    # The loop nest built directly (no buffers: the bindings are let statements and the four
    # accumulators one expression each, so everything stays in registers).
    X = tirx.decl_buffer((n, h, wd, c), x_dtype, "X")
    W2 = tirx.decl_buffer((pairs, c), "int32", "W2")
    B = tirx.decl_buffer((c,), "int32", "B")
    S = tirx.decl_buffer((c,), "float32", "S")
    Y = tirx.decl_buffer((n, oh, ow, c), out_dtype, "Y")
    nn, y, x, cc = (tirx.Var(v, "int32") for v in ("nn", "y", "x", "cc"))
    lets = []

    def let(name, value):
        var = tirx.Var(name, "int32")
        lets.append((var, value))
        return var

    acc = [B[cc * 4 + i] for i in range(4)]
    for p in range(pairs):
        t1 = min(2 * p + 1, taps - 1)
        x0 = let(f"x{p}a", word(X, nn, y, x, 2 * p, cc))
        x1 = let(f"x{p}b", word(X, nn, y, x, t1, cc)) if t1 != 2 * p else x0
        e0, e1 = let(f"e{p}a", arm("llvm.arm.sxtb16", x0)), let(f"e{p}b", arm("llvm.arm.sxtb16", x1))
        o0 = let(f"o{p}a", arm("llvm.arm.sxtb16", ror8(x0)))
        o1 = let(f"o{p}b", arm("llvm.arm.sxtb16", ror8(x1)))
        for i, pair in enumerate((pack_low(e0, e1), pack_low(o0, o1), pack_high(e0, e1),
                                  pack_high(o0, o1))):
            acc[i] = let(f"acc{p}_{i}", arm("llvm.arm.smlad", pair, W2[p, cc * 4 + i], acc[i]))
    body = tirx.SeqStmt([tirx.Bind(var, value) for var, value in lets] + [
        tirx.BufferStore(Y, out(acc[i], S[cc * 4 + i]), [nn, y, x, cc * 4 + i])
        for i in range(4)])
    for var, extent in reversed(list(zip((nn, y, x, cc), (n, oh, ow, c4)))):
        body = tirx.For(var, 0, extent, tirx.ForKind.SERIAL, body)
    func = tirx.PrimFunc([X, W2, B, S, Y], body)
    return func.with_attrs({"tir.noalias": True, "op_pattern": 8, "edgec.qgemm": KIND,
                            "edgec.scheduled": True})
