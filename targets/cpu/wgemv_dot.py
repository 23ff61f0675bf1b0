"""The int8-activation variant of the weight-only matmul (8da4w / 8da8w): each row of ``x`` is
quantized to int8 at run time (symmetric, one scale per row), the products are int8 x int8
summed in int32 (``sdot`` on Armv8.2 dot-product cores), and each group's int32 sum is scaled
to float once:

``y[s, n] = s_x[s] * sum_b scale[b, n] * sum_{g < G} xq[s, b*G + g] * q[b*G + g, n] (+ bias)``

with ``s_x[s] = max_k |x[s, k]| / 127`` and ``xq = round(x / s_x)``. The error against float
compute follows the activation quantization (about 1/254 of each row's largest value per
product), so outputs are compared with a tolerance of that order, not float's.

Weights are packed for ``sdot`` by element (qgemm's ``SDOT`` tensor intrinsic): column tiles of
``T`` channels, and per 16 values of K blocks of ``[4 k-groups][4 channels][4 bytes]``, i.e.
``[N/T, K/16, T/4, 4, 4, 4]`` int8; one intrinsic call loads 16 activation bytes once and does
4 sdot (4 channels x 16 products each). int4 weights keep each 64-byte block as 32 bytes (the
first 32 values in the low nibbles, the last 32 in the high ones), unpacked in registers right
before their sdot as 16 x the weight (the nibble in the byte's top half: one shl or and per 16
weights, no sign extension), the 1/16 folded into the row scale.

Without dot-product instructions (arm-a72), ``pair_te``: the float kernel's layout with pairs
of int8 products summed in int16 (smull + smlal + saddw). x86 keeps the float kernel.
"""

from __future__ import annotations

import logging

import numpy as np

from toolchain.targets.cpu.wgemv import WeightOnlySpec

log = logging.getLogger(__name__)

KB = 16  # K values per intrinsic call
BLOCK = 64  # int8 weights per (16 K values x 4 channels) block


def dot_tiles(rows: int, n: int) -> tuple[int, int]:
    """(T, R): 8 int32 + 8 float accumulators of 4 lanes per row tile (32 channels) for a
    single row, 16 channels x 2 rows otherwise; T divides N where it can."""
    t = 32 if rows == 1 else 16
    while t > 4 and n % t:
        t //= 2
    return t, (2 if rows % 2 == 0 else 1)


def has_sdot(target) -> bool:
    from toolchain.targets.cpu import qgemm

    return target is not None and qgemm.dot_instr(target) is qgemm.SDOT


def supported(k: int, group: int, target) -> bool:
    """Whether the variant applies: with sdot, groups of whole 16-K blocks; on other AArch64
    cores (plain NEON: smull/smlal + saddw) groups of an even size. x86 keeps the float
    kernel (not measured there)."""
    if k % group:
        return False
    if has_sdot(target):
        return group % KB == 0
    return str(target.attrs.get("mtriple", "")).startswith("aarch64") and group % 2 == 0


def pair_te(x, w, scale, bias, spec: WeightOnlySpec):
    """The form without dot instructions: ``wgemv.py``'s layout and schedule, with pairs of
    int8 x int8 products summed in int16 (|a b| <= 127 * 128: two fit) and widened into the
    int32 group sum: smull + smlal + saddw on NEON, 16 products in 4 instructions."""
    from tvm import te, tirx

    t, h, g_len = spec.tile, spec.halves, spec.group
    tj, nt = t // h, spec.n_pad // t
    sx, xq = _quantize_rows(x, spec)

    def weight(c, kk, hh, j):
        byte = w[c, kk, j]
        if spec.bits == 8:
            return byte
        low = tirx.shift_right(tirx.shift_left(byte, tirx.const(4, "int8")), tirx.const(4, "int8"))
        return tirx.if_then_else(hh == 0, low, tirx.shift_right(byte, tirx.const(4, "int8")))

    g = te.reduce_axis((0, g_len // 2), name="g")

    def pair(s, c, b, hh, j):
        k0 = b * g_len + 2 * g
        return (xq[s, k0].astype("int16") * weight(c, k0, hh, j).astype("int16")
                + xq[s, k0 + 1].astype("int16") * weight(c, k0 + 1, hh, j).astype("int16")
                ).astype("int32")

    part = te.compute((spec.rows, nt, spec.groups, h, tj),
                      lambda s, c, b, hh, j: te.sum(pair(s, c, b, hh, j), axis=g),
                      name="wgemv_part")
    b = te.reduce_axis((0, spec.groups), name="b")
    acc = te.compute((spec.rows, nt, h, tj), lambda s, c, hh, j: te.sum(
        part[s, c, b, hh, j].astype("float32") * (scale[c, b, hh * tj + j] * sx[s]), axis=b),
        name="wgemv_acc")

    def out(s, n):
        v = acc[s, n // t, (n % t) // tj, n % tj]
        return v + bias[n] if bias is not None else v

    return te.compute((spec.rows, spec.n), out, name="wgemv_out")


def _quantize_rows(x, spec: WeightOnlySpec):
    """(s_x [S], xq [S, K] int8): symmetric per-row int8 quantization of x."""
    from tvm import te, tirx

    rk = te.reduce_axis((0, spec.k), name="rk")
    amax = te.compute((spec.rows,), lambda s: te.max(tirx.abs(x[s, rk]), axis=rk),
                      name="wdot_amax")
    sx = te.compute((spec.rows,), lambda s: tirx.if_then_else(
        amax[s] > 0, amax[s] / 127.0, tirx.const(1.0, "float32")), name="wdot_sx")
    xq = te.compute((spec.rows, spec.k), lambda s, k: tirx.max(tirx.min(
        tirx.round(x[s, k] / sx[s]), 127.0), -127.0).astype("int8"), name="wdot_xq")
    return sx, xq


def pack_weights(q_kn: np.ndarray, spec: WeightOnlySpec) -> np.ndarray:
    """int weights [K, N] -> [N/T, K/16, T/4, 4, 4, 4] int8 (int4: [.., 32] nibble pairs);
    without sdot, ``wgemv.pack_weights``'s layout."""
    if not spec.sdot:
        from toolchain.targets.cpu import wgemv

        return wgemv.pack_weights(q_kn, spec)
    k, t = spec.k, spec.tile
    q = np.zeros((k, spec.n_pad), np.int16)
    q[:, :spec.n] = q_kn
    # [K/16, 4 (k-group), 4 (byte), N/T, T/4, 4 (channel)] -> [N/T, K/16, T/4, kg, ch, byte]
    v = q.reshape(k // KB, 4, 4, spec.n_pad // t, t // 4, 4).transpose(3, 0, 4, 1, 5, 2)
    v = np.ascontiguousarray(v).reshape(spec.n_pad // t, k // KB, t // 4, BLOCK)
    if spec.bits == 8:
        return v.astype(np.int8).reshape(spec.n_pad // t, k // KB, t // 4, 4, 4, 4)
    lo, hi = v[..., :BLOCK // 2], v[..., BLOCK // 2:]
    return np.ascontiguousarray(((lo & 0xF) | ((hi & 0xF) << 4)).astype(np.uint8).view(np.int8))


def nibble16(byte, ka):
    """16 x the weight of k-group ``ka`` (0-3) from its packed byte (groups 0-1 in the low
    nibbles, 2-3 in the high ones): the nibble moved to, or kept in, the byte's top half, one
    instruction per 16 bytes (shl, or and 0xF0), exact in int8; the 1/16 goes into the row
    scale."""
    from tvm import tirx

    return tirx.if_then_else(ka < 2, tirx.shift_left(byte, tirx.const(4, "int8")),
                             tirx.bitwise_and(byte, tirx.const(-16, "int8")))


SDOT_INT4 = "edgec_wgemv_sdot_int4_4x16"
SDOT_INT8 = "edgec_wgemv_sdot_int8_4x16"
_REGISTERED: set[str] = set()


def _register_sdot() -> None:
    """sdot by element, 4 channels x 16 K values per call, the 16 activation bytes loaded
    once: on int8 weights (64 bytes, qgemm's sdot sequence), and on int4 weights (32 packed
    bytes unpacked in registers: shl + sshr for the low nibbles, sshr for the high ones)."""
    if SDOT_INT4 in _REGISTERED:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    from toolchain.targets.cpu.qgemm import _sdot_by_lane

    @T.prim_func(s_tir=True)
    def desc8(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4, 4, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:4], A[0:16], B[0:4, 0:4, 0:4])
            T.writes(C[0:4])
            for i, ka, kj in T.grid(4, 4, 4):
                with T.sblock("update"):
                    vi, va, vj = T.axis.remap("SRR", [i, ka, kj])
                    C[vi] = C[vi] + T.Cast("int32", A[va * 4 + vj]) * T.Cast("int32",
                                                                              B[va, vi, vj])

    @T.prim_func(s_tir=True)
    def impl8(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4, 4, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:4], A[0:16], B[0:4, 0:4, 0:4])
            T.writes(C[0:4])
            C[T.ramp(0, 1, 4)] = _sdot_by_lane(C.vload([0], "int32x4"), A.vload([0], "int8x16"),
                                               B, T)

    TensorIntrin.register(SDOT_INT8, desc8, impl8, override=True)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16,), "int8", offset_factor=1)
        B = T.match_buffer(b, (32,), "int8", offset_factor=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:4], A[0:16], B[0:32])
            T.writes(C[0:4])
            for i, ka, kj in T.grid(4, 4, 4):
                with T.sblock("update"):
                    vi, va, vj = T.axis.remap("SRR", [i, ka, kj])
                    C[vi] = C[vi] + T.Cast("int32", A[va * 4 + vj]) * T.Cast("int32", T.if_then_else(
                        va < 2, T.shift_left(B[va % 2 * 16 + vi * 4 + vj], T.int8(4)),
                        T.bitwise_and(B[va % 2 * 16 + vi * 4 + vj], T.int8(-16))))

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16,), "int8", offset_factor=1)
        B = T.match_buffer(b, (32,), "int8", offset_factor=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:4], A[0:16], B[0:32])
            T.writes(C[0:4])
            C[T.ramp(0, 1, 4)] = _sdot4(C.vload([0], "int32x4"), A.vload([0], "int8x16"),
                                        B.vload([0], "int8x16"), B.vload([16], "int8x16"), T)

    TensorIntrin.register(SDOT_INT4, desc, impl, override=True)
    _REGISTERED.add(SDOT_INT4)


def _sdot4(acc, a16, lo, hi, T):
    """acc + sdot of the 4 k-groups, 16 x their weights: the low nibbles of lo and hi moved
    up (shl), then their high nibbles (and 0xF0)."""
    four, top = T.broadcast(T.int8(4), 16), T.broadcast(T.int8(-16), 16)
    groups = [T.shift_left(lo, four), T.shift_left(hi, four), T.bitwise_and(lo, top),
              T.bitwise_and(hi, top)]
    words = T.reinterpret(a16, dtype="int32x4")
    for g, wv in enumerate(groups):
        lane = T.reinterpret(T.Shuffle([words], [g, g, g, g]), dtype="int8x16")
        acc = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), acc, wv, lane,
            dtype="int32x4")
    return acc


def wgemv_dot_te(x, w, scale, bias, spec: WeightOnlySpec):
    """TE: ``x`` float32 [S, K] -> [S, N]; ``w`` from ``pack_weights``, ``scale`` from
    ``wgemv.pack_scales`` ([N/T, K/G, T]), ``bias`` [N] or None."""
    from tvm import te, tirx

    if not spec.sdot:
        return pair_te(x, w, scale, bias, spec)
    t, g_len = spec.tile, spec.group
    nt = spec.n_pad // t
    sx, xq = _quantize_rows(x, spec)
    go = te.reduce_axis((0, g_len // KB), name="go")
    ka = te.reduce_axis((0, 4), name="ka")  # the k-group of 4 within 16 K values
    kj = te.reduce_axis((0, 4), name="kj")  # the byte within a k-group

    def product(s, c, b, c4, i):
        kb = b * (g_len // KB) + go
        a = xq[s, kb * KB + ka * 4 + kj].astype("int32")
        if spec.bits == 8:
            return a * w[c, kb, c4, ka, i, kj].astype("int32")
        return a * nibble16(w[c, kb, c4, (ka % 2) * 16 + i * 4 + kj], ka).astype("int32")

    part = te.compute((spec.rows, nt, spec.groups, t // 4, 4),
                      lambda s, c, b, c4, i: te.sum(product(s, c, b, c4, i), axis=[go, ka, kj]),
                      name="wdot_part")
    b = te.reduce_axis((0, spec.groups), name="b")
    # The row scale goes in with the group scales, so the epilogue reads only the tile.
    row = (lambda s: sx[s] * tirx.const(1 / 16, "float32")) if spec.bits == 4 else (
        lambda s: sx[s])
    acc = te.compute((spec.rows, nt, t // 4, 4), lambda s, c, c4, i: te.sum(
        part[s, c, b, c4, i].astype("float32") * (scale[c, b, c4 * 4 + i] * row(s)), axis=b),
        name="wdot_acc")

    def out(s, n):
        v = acc[s, n // t, (n % t) // 4, n % 4]
        return v + bias[n] if bias is not None else v

    return te.compute((spec.rows, spec.n), out, name="wdot_out")


def schedule_wgemv_dot(func, spec: WeightOnlySpec, target, threads: int = 1):
    if not spec.sdot:
        from toolchain.targets.cpu import wgemv

        return _vectorize_quantize(wgemv.schedule_wgemv(func, spec, threads))
    try:
        return _schedule(func, spec, target, threads)
    except Exception as exc:  # noqa: BLE001
        log.warning("int8-activation matmul left unscheduled: %s",
                    str(exc).strip().splitlines()[-1])
        return func


def _vectorize_quantize(func):
    """The row quantization's elementwise loop as 16-byte vectors (when K allows)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        _, k = sch.get_loops(sch.get_sblock("wdot_xq"))
        _, kv = sch.split(k, [None, 16])
        sch.vectorize(kv)
    except Exception as exc:  # noqa: BLE001  (a scalar loop: correct, a little slower)
        log.debug("row quantization not vectorized: %s", str(exc).splitlines()[0])
        return func
    return sch.mod["main"]


def _schedule(func, spec: WeightOnlySpec, target, threads: int):
    from tvm import s_tir

    from toolchain.targets.cpu import qgemm

    sdot = qgemm.dot_instr(target) is qgemm.SDOT
    sch = s_tir.Schedule(_vectorize_quantize(func))
    part = sch.get_sblock("wdot_part")
    acc = sch.get_sblock("wdot_acc")
    out = sch.get_sblock("wdot_out")
    s, c, c4, i, b = sch.get_loops(acc)
    s_o, s_i = sch.split(s, [None, spec.row_tile])
    sch.reorder(s_o, c, b, s_i, c4, i)
    sch.compute_at(part, b, preserve_unit_loops=True)
    ps, _, _, pc4, pi, go, ka, kj = sch.get_loops(part)[3:]  # unit loops, then go, ka, kj
    if sdot:
        sch.reorder(go, ps, pc4, pi, ka, kj)  # (4 channels, 16 K values): one intrinsic call
    else:
        sch.reorder(go, ka, kj, ps, pc4, pi)  # 4 channels' int32 sums as one vector
        sch.vectorize(pi)
    sch.set_scope(part, 0, "local")
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, c, preserve_unit_loops=True)
    if threads > 1 and spec.n_pad // spec.tile >= 2 * threads:
        # Column tiles over the threads (before decompose_reduction, which parallel refuses).
        c = sch.fuse(s_o, c) if spec.rows > spec.row_tile else c
        sch.parallel(c)
    loops = sch.get_loops(acc)
    sch.vectorize(loops[-1])
    sch.unroll(loops[-2])
    sch.unroll(loops[-3])
    sch.decompose_reduction(acc, b)
    sch.decompose_reduction(part, go)
    if sdot:
        _register_sdot()
        sch.tensorize(pi, SDOT_INT4 if spec.bits == 4 else SDOT_INT8)
    sch.unroll(pc4)
    sch.unroll(ps)
    loops = sch.get_loops(out)
    if spec.n % 4 == 0:
        _, vec = sch.split(loops[-1], [None, 4])
        sch.vectorize(vec)
    return sch.mod["main"]


def make_primfunc(spec: WeightOnlySpec):
    from tvm import te

    x = te.placeholder((spec.rows, spec.k), "float32", name="x")
    nt = spec.n_pad // spec.tile
    wshape = ((nt, spec.k // KB, spec.tile // 4, 4, 4, 4) if spec.bits == 8
              else (nt, spec.k // KB, spec.tile // 4, BLOCK // 2))
    if not spec.sdot:
        wshape = (nt, spec.k, spec.tile // spec.halves)
    w = te.placeholder(wshape, "int8", name="w")
    sc = te.placeholder((nt, spec.groups, spec.tile), "float32", name="s")
    args = [x, w, sc]
    bias = None
    if spec.has_bias:
        bias = te.placeholder((spec.n,), "float32", name="bias")
        args.append(bias)
    return te.create_prim_func([*args, wgemv_dot_te(x, w, sc, bias, spec)])
