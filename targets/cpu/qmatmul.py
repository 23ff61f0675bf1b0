"""The int8 matmul of two activations (attention's Q.K^T and P.V), on the int8 GEMM's tiles.

``matmul(dequantize(a, s_a, z_a), dequantize(b, s_b, z_b))`` with int8/uint8 ``a [.., M, K]``
and ``b [.., K, N]`` (the same batch dims, or a 2-D ``b``) becomes:

- ``qmatmul_pack``: ``b`` packed at run time into the layout the GEMM's instruction reads for
  its weights (``qgemm.pack_weight``'s, per batch): ``[B, N_pad/lanes, K_pad/group, lanes,
  group]`` for sdot/vpdpbusd, ``[B, N_pad, K_pad]`` for smull and the generic step; uint8
  values are stored as int8 (value - 128), padding is zero. It is injective: FuseOps fuses it
  into the kernel that quantizes ``b`` (its only reader);
- ``qgemm_act``: the GEMM kernel of qgemm.py with one packed ``b`` per batch, scheduled and
  tensorized by ``qgemm.schedule_qgemm`` like every other int8 GEMM (same blocks, same tiles),
  on the operands as stored (``a`` read in its own shape), with gemmlowp's zero-point
  correction in the epilogue::

      sum (a - z_a)(b - z_b) = sum a'b' - beta * sum a' - alpha * sum b' + K * alpha * beta

  where ``a' = a - c_a`` and ``b' = b - c_b`` are what the instruction multiplies (``c`` the
  +-128 of a stored sign flip) and ``alpha = z_a - c_a``, ``beta = z_b - c_b``. The row sums
  of ``a`` are a Relax sum (vectorized by the CPU schedule), so are the column sums of a
  non-packed ``b``; a packed ``b``'s are vector sums inside the kernel. A zero ``alpha`` or
  ``beta`` drops its sums. The int32 total is scaled once by ``float32(s_a * s_b)``: the same
  numbers as the int16 matmul it replaces (integer.py keeps that one for the shapes this
  kernel does not take, and below ``MIN_MACS``).

The instruction is the device's (``integer_registry.instr_for`` with unknown weight ranges:
smull + sadalp on plain NEON, since two activation products may not fit in int16).
"""

from __future__ import annotations

import logging

import numpy as np
from tvm import relax

from toolchain.targets.cpu import qgemm
from toolchain.targets.cpu.integer_match import OPAQUE, dtype_of, static_shape

log = logging.getLogger(__name__)

# The steps whose tensor intrinsics qgemm.py defines (a target folder's own steps may assume
# weight ranges or register budgets of a constant operand).
_TAKEN = (qgemm.SDOT, qgemm.NEON_SMULL, qgemm.VNNI, qgemm.GENERIC)
_INT8 = ("int8", "uint8")
# Multiply-accumulates per batch from which the kernel pays for its packing, sums and calls
# (exact instruction counts under qemu, two heads of Q.K^T and P.V against the int16 matmul):
# sdot on arm-a76 loses at 8 x 8 x 16 (8.4K against 6.9K instructions) and wins from
# 16 x 16 x 32 (27.9K against 36.6K; 64 x 64 x 64: 294K against 925K); smull + sadalp on
# arm-a72 loses at 16 x 16 x 32 (47K against 37K) and wins from 32 x 32 x 64 (217K against
# 259K; 64 x 64 x 64: 650K against 925K). Keyed by ``DotInstr.packed``.
MIN_MACS = {True: 4096, False: 32768}


def stored_offset(dtype: str, kernel_dtype: str) -> int:
    """``c`` with stored value = value - c: int8 kept as is, uint8 as int8 (-128), int8 as
    uint8 (+128, for u8 x s8 instructions)."""
    if dtype == kernel_dtype:
        return 0
    return 128 if dtype == "uint8" else -128


def padded(instr: qgemm.DotInstr, k: int, n: int) -> tuple[int, int]:
    """(K_pad, N_pad) as qgemm.pack_weight pads a constant weight of N channels."""
    align = qgemm.channel_align(instr, n)
    return -(-k // instr.kblock) * instr.kblock, -(-n // align) * align


def pack_te(b, instr: qgemm.DotInstr, k_pad: int, n_pad: int):
    """TE: activation ``b [B, K, N]`` -> the GEMM's int8 weight layout per batch (module
    docstring), zero outside ``K x N``."""
    from tvm import te, tirx

    _, k, n = (int(d) for d in b.shape)
    shift = stored_offset(str(b.dtype), "int8")

    def value(nn, o, kk):
        v = b[nn, tirx.min(kk, k - 1), tirx.min(o, n - 1)]
        if shift:
            v = (v.astype("int16") - shift).astype("int8")
        return tirx.if_then_else(tirx.all(o < n, kk < k), v, tirx.const(0, "int8"))

    bt = int(b.shape[0])
    if instr.packed:
        lanes, group = instr.lanes, instr.group
        return te.compute((bt, n_pad // lanes, k_pad // group, lanes, group),
                          lambda nn, oo, kg, j, g: value(nn, oo * lanes + j, kg * group + g),
                          name="qmatmul_pack")
    return te.compute((bt, n_pad, k_pad), value, name="qmatmul_pack")


def rows_view(shape: list[int], bt: int, m: int):
    """(batch, row) of the GEMM -> the index prefix of a tensor of ``shape`` whose last axis is
    K (or, with ``shape`` one shorter, the row sums): rows of all batches in order, no copy."""
    from tvm import tirx

    dims = list(shape[:-1])

    def index(nn, x):
        flat = nn * m + x if bt > 1 else x
        out = []
        for i in range(len(dims) - 1, -1, -1):
            out.append(tirx.const(0, "int32") if dims[i] == 1 else flat % dims[i])
            flat = flat // dims[i]
        return out[::-1]

    return index


def matmul_te(a, bp, sums_m, sums_n, *, instr: qgemm.DotInstr, tp: int, n_out: int,
              scale: float, factors: tuple[int, int, int], bt: int, m: int):
    """TE: ``a [.., K]`` (int8/uint8 as stored, ``bt`` batches of ``m`` rows, ``rows_view``),
    ``bp`` from ``pack_te``, the int32 row sums ``sums_m`` of ``a`` (its shape less K) and
    column sums ``sums_n [B, N_pad]`` of ``bp`` (None where their factor is 0; True: computed
    here from a packed ``bp``) -> float32 ``[B, 1, M, N]``: ``(sum a'b' + f_m * sums_m + f_n *
    sums_n + c) * scale`` for ``factors = (f_m, f_n, c)``. The blocks are ``qgemm.gemm_te``'s
    (im2col, qgemm_acc, qgemm_sum, qgemm_out) with the batch as its image index, so that
    ``qgemm.schedule_qgemm`` tiles and tensorizes it."""
    from tvm import te, tirx

    k = int(a.shape[-1])
    row = rows_view([int(d) for d in a.shape], bt, m)
    if instr.packed:
        o_pad, k_pad = int(bp.shape[1]) * int(bp.shape[3]), int(bp.shape[2]) * int(bp.shape[4])
    else:
        o_pad, k_pad = int(bp.shape[1]), int(bp.shape[2])
    p_pad = -(-m // tp) * tp
    adt, xdt = instr.act_dtype, str(a.dtype)
    shift = stored_offset(xdt, adt)

    def load(nn, p, kk):
        v = a[(*row(nn, tirx.min(p, m - 1)), tirx.min(kk, k - 1))]
        if shift:
            v = (v.astype("int16") - shift).astype(adt)
        return tirx.if_then_else(tirx.all(p < m, kk < k), v, tirx.const(0, adt))

    lanes, group = instr.lanes, instr.group
    im2col = te.compute((bt, p_pad, k_pad), load, name="im2col")
    if instr.packed:
        def weight_at(nn, o, kk):
            return bp[nn, o // lanes, kk // group, o % lanes, kk % group]
    else:
        def weight_at(nn, o, kk):
            return bp[nn, o, kk]
    acc = qgemm.accumulate(im2col, weight_at, (bt, p_pad, o_pad), k_pad, instr)
    f_scale = tirx.const(np.float32(scale), "float32")
    f_m, f_n, const = factors
    row_sum = rows_view([int(d) for d in a.shape[:-1]] + [1], bt, m)
    if sums_n is True:  # packed b: its column sums in this kernel, whole vectors at a time
        kg = te.reduce_axis((0, k_pad // group), name="kg")
        part = te.compute((bt, o_pad // lanes, lanes * group), lambda nn, no, e: te.sum(
            bp[nn, no, kg, e // group, e % group].astype("int32"), axis=kg),
            name="qmatmul_colsum_part")
        sums_n = te.compute((bt, o_pad), lambda nn, o: sum(
            (part[nn, o // lanes, (o % lanes) * group + g] for g in range(1, group)),
            part[nn, o // lanes, (o % lanes) * group]), name="qmatmul_colsum")

    def value(nn, y, xx, o):
        corr = tirx.const(const, "int32")
        if sums_m is not None:
            corr = corr + sums_m[tuple(row_sum(nn, xx))] * tirx.const(f_m, "int32")
        if sums_n is not None:
            corr = corr + sums_n[nn, o] * tirx.const(f_n, "int32")
        return qgemm.requantize(acc[nn, y * m + xx, o], corr, f_scale, "float32", 0, None)

    return te.compute((bt, 1, m, n_out), value, name="qgemm_out")


def lower(builder, a, z_a: int, b, z_b: int, scale: float, instr: qgemm.DotInstr):
    """Emit the kernels for ``matmul(dequantize(a, _, z_a), dequantize(b, _, z_b))`` scaled by
    ``scale`` (float32 output of the matmul's shape), or None for what it does not take:
    operands not int8/uint8, rank < 2, batch dims that differ (other than a 2-D ``b``),
    K long enough to overflow the int32 corrections, another target's dot step, fewer
    multiply-accumulates per batch than ``MIN_MACS``."""
    from tvm import te

    sa, sb = static_shape(a), static_shape(b)
    if instr not in _TAKEN or sa is None or sb is None or len(sa) < 2 or len(sb) < 2:
        return None
    if dtype_of(a) not in _INT8 or dtype_of(b) not in _INT8 or sa[-1] != sb[-2]:
        return None
    k, n = sb[-2], sb[-1]
    if len(sb) == 2:  # one b for every row of a: the rows of all batches are one matrix
        bt, m = 1, int(np.prod(sa[:-1]))
        out_shape = sa[:-1] + [n]
    elif sa[:-2] == sb[:-2]:
        bt, m = int(np.prod(sa[:-2])), sa[-2]
        out_shape = sa[:-2] + [m, n]
    else:
        return None
    if k * 255 * 255 * 4 >= 2 ** 31 or m * n * k < MIN_MACS[instr.packed]:
        return None
    c_a = stored_offset(dtype_of(a), instr.act_dtype)
    alpha = z_a - c_a
    beta = z_b - stored_offset(dtype_of(b), "int8")
    k_pad, n_pad = padded(instr, k, n)
    tp = qgemm.row_tile(instr, 1, m, n)

    # sum (a' - alpha)(b' - beta) = sum a'b' - beta * sum a' - alpha * sum b' + K alpha beta,
    # with sum a' = sum a - K c_a (the row sums of a as it is) and sum b' the packed b's.
    b3 = builder.emit(relax.op.reshape(b, [bt, k, n]))
    bp = builder.emit(builder.call_te(lambda bt_: pack_te(bt_, instr, k_pad, n_pad), b3,
                                      primfunc_name_hint="qmatmul_pack"))
    factors = (-beta, -alpha, k * beta * c_a + k * alpha * beta)

    # The row sums (and a non-packed b's column sums: rows of its [N, K] layout) are Relax
    # sums over contiguous bytes, which the CPU schedule vectorizes; a packed b's column sums
    # are vector sums inside the GEMM kernel.
    args = [a, bp]
    if beta:
        args.append(builder.emit(relax.op.sum(relax.op.astype(a, "int32"), axis=[-1])))
    if alpha and not instr.packed:
        args.append(builder.emit(relax.op.sum(relax.op.astype(bp, "int32"), axis=[2])))
    phs = [te.placeholder([int(d) for d in static_shape(x)], dtype_of(x), f"arg{i}")
           for i, x in enumerate(args)]
    rest = list(phs[2:])
    sums_m = rest.pop(0) if beta else None
    sums_n = (rest.pop(0) if not instr.packed else True) if alpha else None
    out_te = matmul_te(phs[0], phs[1], sums_m, sums_n, instr=instr, tp=tp, n_out=n, scale=scale,
                       factors=factors, bt=bt, m=m)
    func = schedule_sums(te.create_prim_func([*phs, out_te])).with_attrs(
        {"op_pattern": OPAQUE, "edgec.qgemm": instr.name, "edgec.qgemm_rows": tp})
    gv = builder.add_func(func, "qgemm_act")
    out = builder.emit(relax.call_tir(gv, args, relax.TensorType([bt, 1, m, n], "float32")))
    log.debug("activation matmul %s x %s -> int8 %s kernel", sa, sb, instr.name)
    return relax.op.reshape(out, out_shape)


def schedule_sums(func):
    """The packed b's column sums in ``matmul_te`` (the GEMM's blocks are left to
    ``qgemm.schedule_qgemm``): each step adds one packed vector (lanes x group bytes of b)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        block = sch.get_sblock("qmatmul_colsum_part")
    except Exception:  # noqa: BLE001  (no column sums: the a zero point is the stored zero)
        return func
    nn, no, e, kg = sch.get_loops(block)
    sch.reorder(nn, no, kg, e)
    sch.vectorize(sch.get_loops(block)[-1])
    sch.vectorize(sch.get_loops(sch.get_sblock("qmatmul_colsum"))[-1])
    return sch.mod["main"]
