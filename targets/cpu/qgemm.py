"""The int8 GEMM kernel behind every integer conv2d and matmul, and its CPU schedule.

One kernel shape serves them all: ``acc[n, p, o] = sum_k A[n, p, k] * W[o, k]`` with both
operands contiguous along the reduction ``k``, an int32 accumulator, and an epilogue that adds
the bias (with the zero-point corrections folded in) and either requantizes to the next layer's
int8/uint8 activation or scales back to float32. For a conv, ``A`` is the im2col view of a
channels-last (NHWC) input, ``k = (r, s, c)``, and ``W`` the weight packed as ``[O, R*S*C]``;
for a matmul ``A`` is the activation itself. ``K`` is padded with zero weights to a multiple of
the instruction's step, ``O`` and the pixel count to the register tile.

The reduction is written with an explicit lane axis, ``acc4[n, p, o, j] = sum_{ko, t}
A[.., ko*S + j*g + t] * W[.., ko*S + j*g + t]``, so that one step ``(j, t)`` is exactly one
instruction and can be tensorized, one step per ISA (``sdot``, NEON ``smull``/``smlal``,
AVX-512 VNNI ``vpdpbusd``, a generic widening step): the instructions and their tensor
intrinsics are in qdot.py.

Requantization multiplies the int32 sum by one float32 scale per output channel and rounds to
nearest-even, as onnxruntime's QLinearConv and XNNPACK's fp32 requantization do (exact match
with onnxruntime in almost all cases; a fixed-point multiplier would differ from it by one step
more often and is not faster on cores with a float unit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

# The instructions live in qdot.py; their names stay importable from here.
from toolchain.targets.cpu.qdot import (  # noqa: F401
    BY_NAME, GENERIC, LANE_SUM, NEON_SMLAL, NEON_SMULL, SDOT, VNNI, _REGISTERED, DotInstr,
    _cpu_has, _register, _register_lane_sum, _sdot_by_lane, dot_instr)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ the kernel (TE)
@dataclass(frozen=True)
class ConvGeometry:
    """An NHWC conv (or, with all ones, a matmul over rows): what im2col needs."""

    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right


# Output channels are padded to a multiple of this (every tile width divides it), or to a
# narrower tile where it would waste weights (channel_align).
O_ALIGN = 8


def packed_cols(instr: DotInstr, out_channels: int) -> int:
    """Channels per register tile of a packed kernel: 16 (4 registers per pixel), or fewer
    when that divides the channel count exactly, so the last tile needs no predicate and the
    epilogue stays vectorized. Otherwise the widest tile whose padding stays small (less than
    one register, or a 16th of the channels): a 10-class head takes one 16-channel register
    on the host (the weights padded to 16 channels, not 64)."""
    tiles = (4 * instr.lanes, 2 * instr.lanes, instr.lanes)
    for cols in tiles:
        if out_channels % cols == 0:
            return cols
    limit = max(instr.lanes - 1, out_channels // 16)
    for cols in tiles:
        if -(-out_channels // cols) * cols - out_channels <= limit:
            return cols
    return instr.lanes


def channel_align(instr: DotInstr, out_channels: int) -> int:
    """What a non-packed kernel pads its output channels to: its channel tile (8, or 4, 2, 1
    where 8 would pad more than a 16th of the channels: a 10-class head keeps 10). The
    schedule takes the widest tile that divides the padded count."""
    if instr.packed:
        return packed_cols(instr, out_channels)
    if instr.tile is not None:
        return O_ALIGN
    for align in (O_ALIGN, 4, 2):
        if -(-out_channels // align) * align - out_channels <= out_channels // 16:
            return align
    return 1


def tile_for(instr: DotInstr, rows: int) -> tuple[int, int]:
    """(pixels, channels) of one register tile. Accumulators take ``tp * to * lanes`` int32:
    16 NEON/AVX-512 registers for the tensorized forms, leaving room for the operands. A single
    row (batch-1 matmul) spends the registers on more channels instead."""
    if instr.packed:  # to channels = to / lanes registers per pixel
        return (1 if rows == 1 else 4), 4 * instr.lanes
    if instr.tile is not None:
        return (1, instr.tile[0] * instr.tile[1]) if rows == 1 else instr.tile
    to = {NEON_SMLAL.name: 4}.get(instr.name, 2)
    if rows == 1:
        return 1, 2 * to
    return 4, to


def row_tile(instr: DotInstr, out_h: int, out_w: int, out_channels: int | None = None) -> int:
    """Output pixels per register tile. The GEMM runs over the flat pixel index, padded to
    whole tiles once at the end of the map (``gemm_te``). A packed kernel keeps 16 accumulator
    registers: 4 pixels x 16 channels, 8 x 8 or 16 x 4 as ``packed_cols`` gives the channels
    (``out_channels``, or the widest tile when not given)."""
    pixels = out_h * out_w
    if pixels == 1:
        return 1
    if instr.tile is not None:  # a row not a multiple of the tile's pixels: one pixel a tile
        return instr.tile[0] if out_w % instr.tile[0] == 0 else 1
    if instr is NEON_SMLAL:
        return min((4, 2), key=lambda tp: _smlal_cost(tp, pixels))
    if instr.packed:
        cols = packed_cols(instr, out_channels) if out_channels else 4 * instr.lanes
        return min(16 * instr.lanes // cols, pixels)
    return tile_for(instr, 2)[0]


def _smlal_cost(tp: int, pixels: int) -> float:
    """Instructions per output of the smull/smlal2/sadalp tile of ``tp`` pixels x 16 / tp
    channels, per 16-byte step: 3 per pixel and channel, one load per pixel and per channel,
    ~2.5 of loop; times the share of padded pixels (the map is padded to whole tiles). 91
    pixels take 2 x 8 tiles (92 pixels), 169 pixels 4 x 4 tiles (172)."""
    to = 16 // tp
    per_output = (3 * tp * to + tp + to + 2.5) / (tp * to)
    return per_output * (-(-pixels // tp) * tp) / pixels


def smlal_cols(tp: int) -> int:
    """Channels of a smull/smlal2 register tile of ``tp`` pixels: 16 int32x4 accumulators."""
    return 16 // tp if tp in (2, 4) else 8


def pack_weight(w_ohwi: np.ndarray, instr: DotInstr) -> np.ndarray:
    """[O, R, S, C] int8 -> [O_pad, K_pad] int8, zero-padded (zero weights add nothing); for a
    packed instruction [O_pad / lanes, K_pad / group, lanes, group]."""
    o = w_ohwi.shape[0]
    k = int(np.prod(w_ohwi.shape[1:]))
    kstep = instr.kblock
    align = channel_align(instr, o)
    kp = -(-k // kstep) * kstep
    op = -(-o // align) * align
    out = np.zeros((op, kp), np.int8)
    out[:o, :k] = w_ohwi.reshape(o, k)
    if instr.packed:
        lanes, group = instr.lanes, instr.group
        out = np.ascontiguousarray(
            out.reshape(op // lanes, lanes, kp // group, group).transpose(0, 2, 1, 3))
    return out


def padded_channels(w_packed: np.ndarray, instr: DotInstr) -> int:
    """O_pad of a packed weight."""
    return int(w_packed.shape[0] * (instr.lanes if instr.packed else 1))


def fits_int4(w: np.ndarray) -> bool:
    """Whether every weight lies in [-8, 7] (and there is an even number of them)."""
    return w.size % 2 == 0 and int(w.min(initial=0)) >= -8 and int(w.max(initial=0)) <= 7


def pack_int4(w: np.ndarray) -> np.ndarray:
    """Two weights per byte: the first half of the flat array in the low nibbles, the second
    half in the high ones (so unpacking is two contiguous, vectorized passes)."""
    flat = w.reshape(-1).astype(np.int16)
    half = flat.size // 2
    return ((flat[:half] & 0xF) | ((flat[half:] & 0xF) << 4)).astype(np.uint8).view(np.int8)


def unpack_int4_te(packed, shape):
    """TE: the int8 weights of ``shape`` from ``pack_int4``'s bytes (sign-extended nibbles)."""
    from tvm import te, tirx

    total = int(np.prod(shape))
    half = total // 2
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]

    def value(*idx):
        flat = sum((i * s for i, s in zip(idx, strides)), tirx.const(0, "int32"))
        low = flat < half
        byte = packed[tirx.if_then_else(low, flat, flat - half)]
        return tirx.if_then_else(low, tirx.shift_right(tirx.shift_left(byte, 4), 4),
                                 tirx.shift_right(byte, 4))

    return te.compute(tuple(shape), value, name="w_unpack")


def gemm_te(x, w, bias, scale, *, geom: ConvGeometry, in_zero: int, instr: DotInstr,
            tp: int, out_channels: int, out_dtype: str, out_zero: int = 0,
            clamp: tuple[int, int] | None = None, int4_shape: tuple[int, ...] | None = None,
            to_int=None, rows=None, float_bias=None, float_relu: bool = False):
    """TE compute for ``x`` NHWC ``[N, H, W, C]`` (int8, or uint8 holding int8 + 128 ... see
    ``in_zero``) -> ``[N, OH, OW, O]`` (requantized ``out_dtype`` or float32).

    ``in_zero`` is the input's zero point in the dtype of ``x``; padded pixels take it. ``w`` is
    ``[O_pad, K_pad]`` int8, ``bias`` int32 ``[O_pad]`` with every correction folded in,
    ``scale`` float32 ``[O_pad]``: ``s_x * s_w / s_y`` when requantizing, ``s_x * s_w`` for float.
    With ``int4_shape``, ``w`` holds ``pack_int4`` bytes of weights of that shape, unpacked once
    per call into a workspace buffer (the binary keeps half the bytes).
    A float32 output may add ``float_bias`` ``[O]`` (the model's own float bias, after the
    scaling: the float graph's order) and apply ReLU (``float_relu``).
    With ``rows`` (a ``qrows.RowChunks``), ``x`` is the padded input of ``qrows.pad_rows_te``,
    ``geom`` has no padding and ``w`` reduces over ``(r, chunk)``.
    """
    from tvm import te, tirx

    if int4_shape is not None:
        w = unpack_int4_te(w, int4_shape)
    n, h, wd, c = (int(d) for d in x.shape)
    (r, s), (sh, sw), (dh, dw) = geom.kernel, geom.strides, geom.dilation
    pt, pl, pb, pr = geom.padding
    oh = (h + pt + pb - dh * (r - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (s - 1) - 1) // sw + 1 if rows is None else rows.out_w
    if instr.packed:
        o_pad, k_pad = int(w.shape[0]) * int(w.shape[2]), int(w.shape[1]) * int(w.shape[3])
    else:
        o_pad, k_pad = (int(d) for d in w.shape)
    k_real = r * s * c
    # Pixels are tiled in their flat order (y * OW + x, the NHWC output's own order): a tile
    # may span two rows, and only the last tile of the whole map is padded (13 x 13: 172
    # pixels computed for 169 with 4-pixel tiles, where padding each row took 208).
    pixels = oh * ow
    p_pad = -(-pixels // tp) * tp
    adt = instr.act_dtype
    xdt = str(x.dtype)

    def load(nn, p, k):
        y, xx = p // ow, p % ow
        if rows is not None:  # one kernel row's taps: a contiguous chunk of the rows view
            rr, j = k // rows.chunk, k % rows.chunk
            iy = tirx.min(y * sh + rr * dh, h - 1)  # only padded (tail) pixels clamp
            inside = tirx.all(rr < r, p < pixels)
            col = xx * (sw * c) + j  # (col // c) * c + col % c flattens back to col
            return flip(tirx.if_then_else(inside, x[nn, iy, col // c, col % c],
                                          tirx.const(in_zero, xdt)))
        rr, ss, cc = k // (s * c), (k // c) % s, k % c
        iy, ix = y * sh + rr * dh - pt, xx * sw + ss * dw - pl
        inside = tirx.all(k < k_real, p < pixels, iy >= 0, iy < h, ix >= 0, ix < wd)
        return flip(tirx.if_then_else(inside, x[nn, tirx.max(tirx.min(iy, h - 1), 0),
                                                tirx.max(tirx.min(ix, wd - 1), 0), cc],
                                      tirx.const(in_zero, xdt)))

    def flip(v):
        if xdt == adt:
            return v
        # int8 <-> uint8 holding int8 + 128: flip the sign bit, exactly.
        return (v.astype("int16") + (128 if adt == "uint8" else -128)).astype(adt)

    lanes, group = instr.lanes, instr.group
    a = te.compute((n, p_pad, k_pad), load, name="im2col")
    if instr.packed:
        acc = accumulate(a, lambda nn, o, k: w[o // lanes, k // group, o % lanes, k % group],
                         (n, p_pad, o_pad), k_pad, instr)
    else:
        acc = accumulate(a, lambda nn, o, k: w[o, k], (n, p_pad, o_pad), k_pad, instr)

    def read_acc(nn, y, xx, o):
        return acc[nn, y * ow + xx, o]

    def value(nn, y, xx, o):
        v = requantize(read_acc(nn, y, xx, o), bias[o], scale[o], out_dtype, out_zero, clamp,
                       to_int)
        if float_bias is not None:
            v = v + float_bias[o]
        return tirx.max(v, tirx.const(0.0, "float32")) if float_relu else v

    return te.compute((n, oh, ow, out_channels), value, name="qgemm_out")


def accumulate(a, weight_at, shape, k_pad: int, instr: DotInstr):
    """TE: the int32 sums ``[N, P_pad, O_pad]`` (``shape``) of ``a [N, P_pad, K_pad]`` (im2col)
    times the weights, ``weight_at(n, o, k)`` their element in the instruction's layout. Packed
    instructions: one ``qgemm_acc`` over ``k``; the others: ``qgemm_acc`` per lane over
    ``(ko, t)`` and ``qgemm_sum`` over the lanes (the blocks ``schedule_qgemm`` looks up)."""
    from tvm import te

    lanes, group, step = instr.lanes, instr.group, instr.step
    if instr.packed:
        k = te.reduce_axis((0, k_pad), name="k")
        return te.compute(
            shape,
            lambda nn, p, o: te.sum(
                a[nn, p, k].astype("int32") * weight_at(nn, o, k).astype("int32"), axis=k),
            name="qgemm_acc")
    ko = te.reduce_axis((0, k_pad // step), name="ko")
    t = te.reduce_axis((0, group), name="t")
    acc4 = te.compute(
        (*shape, lanes),
        lambda nn, p, o, j: te.sum(
            a[nn, p, ko * step + instr.index(j, t)].astype("int32")
            * weight_at(nn, o, ko * step + instr.index(j, t)).astype("int32"), axis=[ko, t]),
        name="qgemm_acc")
    jj = te.reduce_axis((0, lanes), name="j")
    return te.compute(shape, lambda nn, p, o: te.sum(acc4[nn, p, o, jj], axis=jj),
                      name="qgemm_sum")


def requantize(acc, bias, scale, out_dtype: str, out_zero: int, clamp, to_int=None):
    """The epilogue of every integer kernel: (acc + bias) * scale, rounded to nearest-even,
    shifted by the zero point and clamped (ReLU/Clip folded into ``clamp``); or float32.

    ``to_int(v)``: a target's own float32 -> int32 conversion that rounds to nearest-even and
    saturates (Cortex-M: ``vcvtr``; its FPv4 has no VRINT, and LLVM calls ``rintf`` for
    ``round``, ~25 instructions per output)."""
    from tvm import tirx

    v = (acc + bias).astype("float32") * scale
    if out_dtype == "float32":
        return v
    lo, hi = clamp if clamp is not None else ((-128, 127) if out_dtype == "int8" else (0, 255))
    if to_int is not None:
        q = tirx.max(tirx.min(to_int(v), hi - out_zero), lo - out_zero) + out_zero
        return q.astype(out_dtype)
    q = tirx.round(v).astype("int32") + out_zero
    lo, hi = clamp if clamp is not None else ((-128, 127) if out_dtype == "int8" else (0, 255))
    return tirx.max(tirx.min(q, hi), lo).astype(out_dtype)


# ------------------------------------------------------------------------ schedule
def schedule_qgemm(func, target, threads: int = 1):
    """Register-tile and tensorize an int8 GEMM kernel made by ``gemm_te`` (plain loops, which
    are correct but slow, if a primitive refuses)."""
    try:
        return _schedule_qgemm(func, target, threads)
    except Exception as exc:  # noqa: BLE001
        log.warning("int8 GEMM kernel left unscheduled: %s", str(exc).strip().splitlines()[-1])
        return func


def _schedule_qgemm(func, target, threads: int):
    from tvm import s_tir

    name = str(func.attrs["edgec.qgemm"]) if func.attrs is not None and "edgec.qgemm" in func.attrs else ""
    from toolchain.targets.cpu import qdepthwise

    if "edgec.scheduled" in func.attrs:  # a target folder's hand-written kernel
        return func
    if name == qdepthwise.KIND:
        return qdepthwise.schedule_depthwise(func, threads)
    instr = BY_NAME.get(name) or dot_instr(target)
    tp = int(func.attrs["edgec.qgemm_rows"]) if "edgec.qgemm_rows" in func.attrs else 1
    chunk_vector = int(func.attrs["edgec.qgemm_chunk_vector"]) if (
        "edgec.qgemm_chunk_vector" in func.attrs) else 0
    func = _schedule_unpack(func)
    if instr.packed:
        return _schedule_packed(func, instr, tp, threads, chunk_vector)
    sch = s_tir.Schedule(func)
    acc4 = sch.get_sblock("qgemm_acc")
    sumb = sch.get_sblock("qgemm_sum")
    out = sch.get_sblock("qgemm_out")
    im2col = sch.get_sblock("im2col")
    n, p, o, j, ko, t = sch.get_loops(acc4)
    ext = [int(sch.get(l).extent) for l in (n, p, o, j, ko, t)]
    lanes = ext[3]
    if lanes != instr.lanes or ext[5] != instr.group:
        raise ValueError(f"qgemm kernel built for {lanes}x{ext[5]} lanes, target has {instr}")
    _, to = tile_for(instr, 1 if ext[1] == 1 else 2)
    if ext[1] > 1 and instr.tile is not None:  # as many accumulators with one pixel a tile
        to = instr.tile[0] * instr.tile[1] // tp
    if instr is NEON_SMLAL and ext[1] > 1:
        to = smlal_cols(tp)
    while ext[2] % to:  # channels padded to a narrower tile (channel_align)
        to //= 2
    p_o, p_i = sch.split(p, [None, tp])
    o_o, o_i = sch.split(o, [None, to])
    # Two reduction steps per loop trip: the loop's own counter and address arithmetic
    # (5 of ~60 instructions per step on arm-a72) is paid half as often.
    ko_i = None
    if ext[4] % 2 == 0 and ext[4] >= 4:
        ko, ko_i = sch.split(ko, [None, 2])
        sch.reorder(n, p_o, o_o, ko, ko_i, p_i, o_i, j, t)
    else:
        sch.reorder(n, p_o, o_o, ko, p_i, o_i, j, t)
    # A tiled instruction is for CPUs without SIMD (Cortex-M4/M7): a scalar epilogue.
    _tile_common(sch, im2col, acc4, out, p_o, o_o, to, [sumb], instr.tile is None,
                 chunk_vector)
    _parallel_tiles(sch, n, p_o, o_o, threads)
    sch.decompose_reduction(acc4, ko)
    if ko_i is not None:
        sch.unroll(ko_i)
    _register(instr)
    sch.tensorize(j, instr.name)
    if lanes == 4 and to % 4 == 0 and instr.name.startswith("edgec_smlal"):
        # The 4 partial sums of 4 channels at once: addp(addp(a0, a1), addp(a2, a3)).
        try:
            s_loops = sch.get_loops(sumb)
            if to > 4:
                sch.split(s_loops[-2], [None, 4])
                s_loops = sch.get_loops(sumb)
            sch.decompose_reduction(sumb, s_loops[-2])
            _register_lane_sum()
            sch.tensorize(sch.get_loops(sumb)[-2], LANE_SUM)
        except Exception as exc:  # noqa: BLE001  (the scalar lane sums stay)
            log.debug("lane sum not tensorized: %s", str(exc).splitlines()[0])
    sch.unroll(o_i)
    sch.unroll(p_i)
    return sch.mod["main"]


def _schedule_unpack(func):
    """The int4 unpacking pass (if any): one flat loop, split at the half and vectorized."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        block = sch.get_sblock("w_unpack")
    except Exception:  # noqa: BLE001  (int8 weights: nothing to unpack)
        return func
    try:
        flat = sch.fuse(*sch.get_loops(block))
        total = int(sch.get(flat).extent)
        halves, rest = sch.split(flat, [2, total // 2])
        if (total // 2) % 16 == 0:
            _, vec = sch.split(rest, [None, 16])
            sch.vectorize(vec)
        return sch.mod["main"]
    except Exception as exc:  # noqa: BLE001
        log.debug("int4 unpack not vectorized: %s", str(exc).splitlines()[0])
        return func


def _tile_common(sch, im2col, acc, out, rows, cols, to: int, between=(),
                 vectorize: bool = True, chunk_vector: int = 0) -> None:
    """What both kernel forms share. im2col per row tile (loop ``rows``), just before the
    tile's first use: A shrinks to [tp, K] (in L1), reused across all channel tiles. The
    accumulators live in registers: only the tile's are ever live (compacted to it). The
    epilogue runs per tile (loop ``cols``), vectorized over its channels."""
    sch.compute_at(im2col, rows, preserve_unit_loops=True)
    _schedule_im2col(sch, im2col, int(sch.get(sch.get_loops(im2col)[-1]).extent), chunk_vector)
    sch.set_scope(acc, 0, "local")
    _flat_pixels(sch, out)
    for block in between:
        sch.reverse_compute_at(block, cols, preserve_unit_loops=True)
    try:
        sch.reverse_compute_at(out, cols, preserve_unit_loops=True)
        if vectorize:
            _vectorize_inner(sch, out, to)
    except Exception as exc:  # noqa: BLE001  (epilogue as its own loop nest)
        log.debug("qgemm epilogue not tiled: %s", str(exc).splitlines()[0])


def _flat_pixels(sch, out) -> None:
    """The epilogue's (y, x) iterations as one flat pixel index, the GEMM's own: a register
    tile of pixels [p, p + tp) is then a range of it (reverse_compute_at can place it)."""
    loops = sch.get_loops(out)
    ow = int(sch.get(loops[2]).extent)
    sch.transform_block_layout(out, lambda nn, y, xx, o: (nn, y * ow + xx, o))


def _schedule_packed(func, instr: DotInstr, tp: int, threads: int, chunk_vector: int = 0):
    """Tile [tp pixels x to channels] with one accumulator register per 4 channels and pixel;
    each call loads 16 activation bytes of a pixel once and ``groups_per_call`` weight vectors
    per 4 channels (sdot by element), so no horizontal sum is left for the epilogue."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("qgemm_acc")
    out = sch.get_sblock("qgemm_out")
    im2col = sch.get_sblock("im2col")
    n, p, o, k = sch.get_loops(acc)
    to = packed_cols(instr, int(sch.get(sch.get_loops(out)[-1]).extent))
    x_o, x_i = sch.split(p, [None, tp])
    o_o, o_io, o_ii = sch.split(o, [None, to // instr.lanes, instr.lanes])
    k_o, k_i = sch.split(k, [None, instr.kblock])
    # Per weight register, all the tile's pixels: 16 accumulators, the pixels' activation
    # registers and one weight register live (pixel-major order made LLVM keep all 16 weight
    # registers of a step and spill: 100 instead of 84 instructions per 64 sdot).
    sch.reorder(n, x_o, o_o, k_o, o_io, x_i, o_ii, k_i)
    _tile_common(sch, im2col, acc, out, x_o, o_o, to, chunk_vector=chunk_vector)
    _parallel_tiles(sch, n, x_o, o_o, threads)
    sch.decompose_reduction(acc, k_o)
    _register(instr)
    sch.tensorize(o_ii, instr.name)
    sch.unroll(o_io)
    sch.unroll(x_i)
    return sch.mod["main"]


def _parallel_tiles(sch, n, rows, cols, threads: int) -> None:
    """With ``threads > 1``, one loop of register tiles made parallel: the (image, pixel tile)
    loops fused, each task whole tiles (their im2col, accumulators and epilogue); or, where
    there are fewer pixel tiles than threads and more channel tiles (a batch-1 matmul), the
    channel tiles of each pixel tile. Called before ``decompose_reduction`` and
    ``tensorize``: a parallel loop needs every block under it complete or a reduction with
    its init, and an update block without its init (decomposed) or a tensorized one is
    neither ("5) The reduction block vars are not used to index the output buffers")."""
    if threads <= 1:
        return
    tiles = int(sch.get(n).extent) * int(sch.get(rows).extent)
    if tiles < threads and int(sch.get(cols).extent) > tiles:
        sch.parallel(cols)
    else:
        sch.parallel(sch.fuse(n, rows))


def _vectorize_inner(sch, block, width: int) -> None:
    loops = sch.get_loops(block)
    if loops and int(sch.get(loops[-1]).extent) == width and width > 1:
        sch.vectorize(loops[-1])


def _schedule_im2col(sch, block, k_pad: int, chunk_vector: int = 0) -> None:
    """Split the reduction axis of the copy into (kernel position, channel) where it has no
    padding, so the channel loop is a plain contiguous (vectorized) copy; for a row-chunk
    conv (qrows.py) into copies of ``chunk_vector`` bytes."""
    channels = _im2col_channels(sch.get(block))
    loops = sch.get_loops(block)
    k = loops[-1]
    if chunk_vector and k_pad % chunk_vector == 0:
        _, ci = sch.split(k, [None, chunk_vector])
        sch.vectorize(ci)
    elif channels and k_pad % channels == 0 and k_pad > channels:
        _, c = sch.split(k, [None, channels])
        if channels % 8 == 0:
            inner = 16 if channels % 16 == 0 else 8
            _, ci = sch.split(c, [None, inner])
            sch.vectorize(ci)
    elif k_pad <= 64:
        sch.unroll(k)


def _im2col_channels(block) -> int:
    """C of the input [N, H, W, C] that the im2col block reads (0 if not found)."""
    for region in block.reads:
        buf = getattr(region, "buffer", None) or region.source
        if len(buf.shape) == 4:
            return int(buf.shape[3])
    return 0
