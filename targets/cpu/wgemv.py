"""The weight-only quantized matmul kernel: float activations, int8 or int4 weights,
dequantized in registers inside the reduction, and its CPU schedule.

``y[s, n] = sum_b scale[b, n] * sum_{g < G} x[s, b*G + g] * q[b*G + g, n] (+ bias[n])``

with ``q`` int8 (per channel: one group, ``G = K``) or int4 (groups of ``G`` along K, a scale
per group and channel, as llama.cpp's Q4_0 without its offset). No float copy of the weights
exists anywhere: the weights blob holds ``q`` (int4 two per byte) and the scales, and each
weight vector is loaded, sign-extended and converted to float32 in registers right before its
multiply-add. The group's partial sum is a float accumulator, scaled once per group.

Weight layout (``pack_weights``): column tiles of ``T`` channels, each tile contiguous along K,
``[N/T, K, T]`` bytes for int8, so the kernel streams the blob front to back. int4 keeps the
tile's first ``T/2`` channels in the low nibbles and the other ``T/2`` in the high nibbles of
``[N/T, K, T/2]`` bytes: unpacking is one shift pair (low) or one arithmetic shift (high) per
16 weights, each giving a contiguous vector of channels. Scales are ``[N/T, K/G, T]``.

Schedule (``schedule_wgemv``): per (row tile, column tile), the ``R x T`` accumulators and the
``R x T`` group partial sums live in registers; the loop over a group's K is innermost-but-one
with the ``T`` channels vectorized (NEON fmla / AVX-512 FMA with the activation broadcast).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

KIND = "edgec_wgemv"


@dataclass(frozen=True)
class WeightOnlySpec:
    """One weight-only matmul: ``[S, K] x [K, N]`` with ``bits``-bit weights in groups of
    ``group`` along K (``group == K``: one scale per channel)."""

    rows: int
    k: int
    n: int
    bits: int  # 8 or 4
    group: int
    tile: int  # channels per column tile (T)
    row_tile: int  # rows per register tile (R)
    has_bias: bool
    int8_act: bool = False  # x quantized to int8 per row at run time (wgemv_dot.py)
    sdot: bool = False  # int8_act: sdot's packed form (else int16 pair products)

    @property
    def halves(self) -> int:
        return 2 if self.bits == 4 else 1

    @property
    def n_pad(self) -> int:
        return -(-self.n // self.tile) * self.tile

    @property
    def groups(self) -> int:
        return self.k // self.group

    def weight_bytes(self) -> int:
        return self.n_pad * self.k // self.halves


def _lanes(target) -> int:
    """float32 lanes of the target's vector registers."""
    triple = str(target.attrs.get("mtriple", "")) if target is not None else ""
    attrs = [str(a) for a in (target.attrs.get("mattr") or [])] if target is not None else []
    cpu = str(target.attrs.get("mcpu", "")) if target is not None else ""
    if triple.startswith("x86_64"):
        from toolchain.targets.cpu.qgemm import _cpu_has

        return 16 if any("avx512" in a for a in attrs) or _cpu_has(cpu, "avx512f") else 8
    return 4


def choose_tiles(target, rows: int, n: int, bits: int) -> tuple[int, int]:
    """(T channels, R rows) of one register tile. Accumulators and group partial sums take
    ``2 * R * T / lanes`` vector registers: about 16 of NEON's 32, 8 of AVX-512's 32 (x86 FMAs
    take the activation broadcast from memory)."""
    lanes = _lanes(target)
    budget = 16 if lanes == 4 else 8
    r = 4 if rows % 4 == 0 else (2 if rows % 2 == 0 else 1)
    # int4 tiles split into two halves of T/2 channels: each half at least a whole vector.
    min_t = lanes * (2 if bits == 4 else 1)
    t = max(min_t, (budget // (2 * r)) * lanes)
    while t > min_t and n % t:
        t //= 2
    return t, r


# ------------------------------------------------------------------------ packing
def pack_weights(q_kn: np.ndarray, spec: WeightOnlySpec) -> np.ndarray:
    """int weights ``[K, N]`` -> the kernel's int8 bytes (see the module docstring)."""
    k, n, t = spec.k, spec.n, spec.tile
    q = np.zeros((k, spec.n_pad), np.int16)
    q[:, :n] = q_kn
    tiles = q.reshape(k, spec.n_pad // t, t).transpose(1, 0, 2)  # [NT, K, T]
    if spec.bits == 8:
        return np.ascontiguousarray(tiles).astype(np.int8)
    lo, hi = tiles[..., : t // 2], tiles[..., t // 2:]
    return np.ascontiguousarray(((lo & 0xF) | ((hi & 0xF) << 4)).astype(np.uint8).view(np.int8))


def pack_scales(scale_bn: np.ndarray, spec: WeightOnlySpec) -> np.ndarray:
    """float scales ``[K/G, N]`` -> ``[N/T, K/G, T]`` (zero for padded channels)."""
    s = np.zeros((spec.groups, spec.n_pad), np.float32)
    s[:, :spec.n] = scale_bn
    return np.ascontiguousarray(s.reshape(spec.groups, -1, spec.tile).transpose(1, 0, 2))


# ------------------------------------------------------------------------ the kernel (TE)
def wgemv_te(x, w, scale, bias, spec: WeightOnlySpec):
    """TE for ``x`` float32 ``[S, K]`` -> ``[S, N]``; ``w``/``scale`` from ``pack_weights`` /
    ``pack_scales``, ``bias`` float32 ``[N]`` or None."""
    from tvm import te, tirx

    t, h, g_len = spec.tile, spec.halves, spec.group
    tj = t // h
    nt = spec.n_pad // t

    def weight(c, kk, hh, j):
        byte = w[c, kk, j]
        if spec.bits == 8:
            return byte.astype("float32")
        # Sign-extended nibbles: the low one by shifting it up and back, the high one down.
        low = tirx.shift_right(tirx.shift_left(byte, tirx.const(4, "int8")), tirx.const(4, "int8"))
        high = tirx.shift_right(byte, tirx.const(4, "int8"))
        return tirx.if_then_else(hh == 0, low, high).astype("float32")

    g = te.reduce_axis((0, g_len), name="g")
    part = te.compute(
        (spec.rows, nt, spec.groups, h, tj),
        lambda s, c, b, hh, j: te.sum(x[s, b * g_len + g] * weight(c, b * g_len + g, hh, j),
                                      axis=g),
        name="wgemv_part")
    b = te.reduce_axis((0, spec.groups), name="b")
    acc = te.compute(
        (spec.rows, nt, h, tj),
        lambda s, c, hh, j: te.sum(part[s, c, b, hh, j] * scale[c, b, hh * tj + j], axis=b),
        name="wgemv_acc")

    def out(s, n):
        v = acc[s, n // t, (n % t) // tj, n % tj]
        return v + bias[n] if bias is not None else v

    return te.compute((spec.rows, spec.n), out, name="wgemv_out")


# ------------------------------------------------------------------------ schedule
def schedule_wgemv(func, spec: WeightOnlySpec, threads: int = 1):
    """Register-tile the kernel (plain loops, correct but slow, if a primitive refuses)."""
    try:
        return _schedule(func, spec, threads)
    except Exception as exc:  # noqa: BLE001
        log.warning("weight-only matmul left unscheduled: %s",
                    str(exc).strip().splitlines()[-1])
        return func


def _schedule(func, spec: WeightOnlySpec, threads: int):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    part = sch.get_sblock("wgemv_part")
    acc = sch.get_sblock("wgemv_acc")
    out = sch.get_sblock("wgemv_out")
    s, c, hh, j, b = sch.get_loops(acc)
    s_o, s_i = sch.split(s, [None, spec.row_tile])
    sch.reorder(s_o, c, b, s_i, hh, j)
    sch.compute_at(part, b, preserve_unit_loops=True)
    inner = sch.get_loops(part)[3:]  # the unit loops compute_at made, then g
    sch.reorder(inner[-1], *inner[:-1])
    pg = inner[-1]
    sch.set_scope(part, 0, "local")
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, c, preserve_unit_loops=True)
    if threads > 1 and spec.n_pad // spec.tile >= 2 * threads:
        # Column tiles over the threads (before decompose_reduction, which parallel refuses).
        c = sch.fuse(s_o, c) if spec.rows > spec.row_tile else c
        sch.parallel(c)
    # Innermost: the tile's channels as vectors, rows and nibble halves unrolled (before
    # decompose_reduction: vectorize refuses an update block without its init).
    for block in (part, acc):
        loops = sch.get_loops(block)
        sch.vectorize(loops[-1])
        for loop in loops[-3:-1]:
            sch.unroll(loop)
    sch.decompose_reduction(part, pg)
    sch.decompose_reduction(acc, b)
    for block in ("wgemv_part_init", "wgemv_acc_init"):
        loops = sch.get_loops(sch.get_sblock(block))
        if sch.get(loops[-1]).kind != 2:  # not yet vectorized
            sch.vectorize(loops[-1])
    loops = sch.get_loops(out)
    if spec.n % spec.tile == 0:
        _, vec = sch.split(loops[-1], [None, spec.tile // spec.halves])
        sch.vectorize(vec)
    return sch.mod["main"]


def make_primfunc(spec: WeightOnlySpec):
    """The kernel as a PrimFunc (unscheduled), for tests and benchmarks."""
    from tvm import te

    x = te.placeholder((spec.rows, spec.k), "float32", name="x")
    w = te.placeholder((spec.n_pad // spec.tile, spec.k, spec.tile // spec.halves), "int8",
                       name="w")
    sc = te.placeholder((spec.n_pad // spec.tile, spec.groups, spec.tile), "float32", name="s")
    args = [x, w, sc]
    bias = None
    if spec.has_bias:
        bias = te.placeholder((spec.n,), "float32", name="bias")
        args.append(bias)
    y = wgemv_te(x, w, sc, bias, spec)
    return te.create_prim_func([*args, y])
