"""The int8 dot instructions of the integer GEMM (qgemm.py), one per ISA, as TVM tensor
intrinsics: which one a target has, and what one reduction step of each computes.

- ``sdot`` by element (Armv8.2 dot product, arm-a76), the packed form: each lane is one
  output channel, the weights are packed [O/4, K/4, 4, 4], 16 bytes of a pixel's activation
  are loaded once and each 4-byte group is picked by lane; a 4 pixel x 16 channel tile keeps
  16 accumulators and needs no horizontal sum;
- ``smull`` + ``smlal2`` + ``sadalp`` (plain NEON, arm-a72/a53) when the weights lie in
  [-127, 127] (two products summed in int16 cannot overflow): 4 lanes x 4 bytes; otherwise
  ``smull``/``smull2`` + ``sadalp``, 8 lanes x 2 bytes; the 4 partial sums of 4 channels then
  meet in two levels of ``addp`` (``LANE_SUM``);
- ``vpdpbusd`` (AVX-512 VNNI, host), packed like sdot: 16 output channels per zmm, the
  activation's 4 bytes broadcast, uint8 x int8 (the activation is stored shifted by +128 and
  the bias corrects for it);
- elsewhere (armv7, x86 without VNNI) the same 8 x 2 step in plain vector ops, for LLVM to
  lower (vmull/vmlal on armv7).

Target folders add their own (targets/cortexm/int8_dot.py: ``BY_NAME``, ``_REGISTERED``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DotInstr:
    """One reduction step: ``lanes`` int32 accumulators, each summing ``group`` products."""

    name: str  # the TensorIntrin registered for one step
    lanes: int
    group: int
    act_dtype: str  # what A holds: "int8", or "uint8" (value + 128) for u8 x s8 instructions
    # Lane j sums bytes {2j, 2j+1, 2j+8, 2j+9} (smull + smlal2 + sadalp) instead of
    # {g*j .. g*j+g-1}.
    split_halves: bool = False
    # Each lane is one output channel (weights packed [O/lanes, K/group, lanes, group], the
    # activation's ``group`` bytes broadcast): no horizontal sum, one load of A per step.
    packed: bool = False
    # Packed: weight groups one instruction call covers (the activation is loaded once as
    # ``groups_per_call * group`` bytes and each group picked by lane: sdot by element).
    groups_per_call: int = 1
    # (pixels, channels) of the register tile, for CPUs with few registers (Cortex-M's 13
    # general registers hold the accumulators and the operands); None: tile_for's default.
    tile: tuple[int, int] | None = None

    @property
    def step(self) -> int:
        return self.lanes * self.group

    @property
    def kblock(self) -> int:
        """The reduction length one call covers (K is padded to a multiple of it)."""
        return self.group * self.groups_per_call if self.packed else self.step

    def index(self, j, t):
        """The byte of a step that product t of lane j reads."""
        if self.split_halves:
            return j * 2 + t % 2 + t // 2 * 8
        return j * self.group + t


GENERIC = DotInstr("edgec_widen_8x2_i8", 8, 2, "int8")
SDOT = DotInstr("edgec_sdot_idx_4x16_i8", 4, 4, "int8", packed=True, groups_per_call=4)
NEON_SMULL = DotInstr("edgec_smull_8x2_i8", 8, 2, "int8")
# Pairs of products are summed in int16 first: needs weights in [-127, 127] (dot_instr).
NEON_SMLAL = DotInstr("edgec_smlal_4x4_i8", 4, 4, "int8", split_halves=True)
VNNI = DotInstr("edgec_vpdpbusd_bcast_16x4_u8i8", 16, 4, "uint8", packed=True)
BY_NAME = {i.name: i for i in (GENERIC, SDOT, NEON_SMULL, NEON_SMLAL, VNNI)}


def _mattr(target) -> list[str]:
    return [str(a) for a in (target.attrs.get("mattr") or [])]


def dot_instr(target, symmetric_weights: bool = False) -> DotInstr:
    """The int8 dot instruction the target has (see the module docstring); with weights in
    [-127, 127] plain NEON sums pairs of products in int16 (3 instructions per 16 products
    instead of 4)."""
    triple = str(target.attrs.get("mtriple", ""))
    attrs = _mattr(target)
    if triple.startswith("aarch64"):
        if any("dotprod" in a for a in attrs):
            return SDOT
        return NEON_SMLAL if symmetric_weights else NEON_SMULL
    if triple.startswith("x86_64"):
        cpu = str(target.attrs.get("mcpu", ""))
        if any("avx512vnni" in a for a in attrs) or _cpu_has(cpu, "avx512vnni"):
            return VNNI
    return GENERIC


def _cpu_has(cpu: str, feature: str) -> bool:
    from tvm.target import codegen

    try:
        return bool(codegen.llvm_cpu_has_features([feature], tvm_target(cpu)))
    except Exception:  # noqa: BLE001  (older TVM: no feature query)
        return cpu in ("cascadelake", "icelake-server", "icelake-client", "tigerlake",
                       "sapphirerapids", "znver4", "znver5", "cooperlake", "alderlake",
                       "graniterapids", "emeraldrapids")


def tvm_target(cpu: str):
    import tvm
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mtriple": codegen.llvm_get_system_triple(),
                              "mcpu": cpu})


# ------------------------------------------------------------------------ tensor intrinsics
def _sdot_by_lane(acc, a16, b, T):
    """acc + sum over the 4 groups g of sdot(b[g], lane g of a16 in every lane)."""
    words = T.reinterpret(a16, dtype="int32x4")
    for g in range(4):
        lane = T.reinterpret(T.Shuffle([words], [g, g, g, g]), dtype="int8x16")
        acc = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), acc,
            b.vload([g, 0, 0], "int8x16"), lane, dtype="int32x4")
    return acc


_REGISTERED: set[str] = set()


def _register(instr: DotInstr) -> None:
    if instr.name in _REGISTERED:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    lanes, group, step = instr.lanes, instr.group, instr.step
    adt = instr.act_dtype

    if instr.packed:
        kb, gpc = instr.kblock, instr.groups_per_call

        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (kb,), adt, offset_factor=1)
            B = T.match_buffer(b, (gpc, lanes, group), "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:kb], B[0:gpc, 0:lanes, 0:group])
                T.writes(C[0:lanes])
                for i, k in T.grid(lanes, kb):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(
                            B[vk // group, vi, vk % group], "int32")
    else:
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (step,), adt, offset_factor=1)
            B = T.match_buffer(b, (step,), "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:step], B[0:step])
                T.writes(C[0:lanes])
                for j, t in T.grid(lanes, group):
                    with T.sblock("update"):
                        vj, vt = T.axis.remap("SR", [j, t])
                        C[vj] = C[vj] + T.cast(A[instr.index(vj, vt)], "int32") * T.cast(
                            B[instr.index(vj, vt)], "int32")

    if instr is SDOT:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (16,), "int8", offset_factor=1)
            B = T.match_buffer(b, (4, 4, 4), "int8", offset_factor=1)
            C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:4], A[0:16], B[0:4, 0:4, 0:4])
                T.writes(C[0:4])
                # 16 activation bytes loaded once; group g (4 bytes) picked by 32-bit lane
                # (LLVM: sdot by element), against 4 channels x 4 bytes of weights each.
                C[T.ramp(0, 1, 4)] = _sdot_by_lane(C.vload([0], "int32x4"),
                                                   A.vload([0], "int8x16"), B, T)
    elif instr is NEON_SMULL:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (16,), "int8", offset_factor=1)
            B = T.match_buffer(b, (16,), "int8", offset_factor=1)
            C = T.match_buffer(c, (8,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:8], A[0:16], B[0:16])
                T.writes(C[0:8])
                # smull: 8 int16 products; saddlp: pairs into 4 int32 (sadalp). Lanes 0-3
                # hold bytes 0-7, lanes 4-7 bytes 8-15.
                C[T.ramp(0, 1, 4)] = C.vload([0], "int32x4") + _saddlp(
                    _smull(A.vload([0], "int8x8"), B.vload([0], "int8x8"), T), T)
                C[T.ramp(4, 1, 4)] = C.vload([4], "int32x4") + _saddlp(
                    _smull(A.vload([8], "int8x8"), B.vload([8], "int8x8"), T), T)
    elif instr is NEON_SMLAL:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (16,), "int8", offset_factor=1)
            B = T.match_buffer(b, (16,), "int8", offset_factor=1)
            C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:4], A[0:16], B[0:16])
                T.writes(C[0:4])
                # smull (bytes 0-7) + smlal2 (bytes 8-15) in int16, then sadalp: lane j gets
                # bytes 2j, 2j+1, 2j+8, 2j+9. |a*w| <= 128*127, so two fit in int16.
                # One 16-byte load per operand; the high halves go to smlal2 directly.
                a16 = A.vload([0], "int8x16")
                b16 = B.vload([0], "int8x16")
                C[T.ramp(0, 1, 4)] = C.vload([0], "int32x4") + _saddlp(
                    _smull(_low(a16, T), _low(b16, T), T)
                    + _smull(_high(a16, T), _high(b16, T), T), T)
    elif instr is VNNI:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
            B = T.match_buffer(b, (1, 16, 4), "int8", offset_factor=1)
            C = T.match_buffer(c, (16,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:16], A[0:4], B[0:1, 0:16, 0:4])
                T.writes(C[0:16])
                # The activation's 4 bytes in every 32-bit lane, 16 channels x 4 bytes of
                # weights: lane i += dot(A, B[i]) (LLVM 20 takes <64 x i8> operands).
                C[T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                    C.vload([0], "int32x16"),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"),
                                                            dtype="int32"), 16), dtype="uint8x64"),
                    B.vload([0, 0, 0], "int8x64"), dtype="int32x16")
    elif instr is GENERIC:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (16,), "int8", offset_factor=1)
            B = T.match_buffer(b, (16,), "int8", offset_factor=1)
            C = T.match_buffer(c, (8,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:8], A[0:16], B[0:16])
                T.writes(C[0:8])
                # Widening multiply-adds of the even and the odd bytes in plain vector ops
                # (LLVM picks the instructions: vld2 + vmull/vmlal on armv7).
                C[T.ramp(0, 1, 8)] = (
                    C.vload([0], "int32x8")
                    + T.Cast("int32x8", A[T.ramp(0, 2, 8)]) * T.Cast("int32x8", B[T.ramp(0, 2, 8)])
                    + T.Cast("int32x8", A[T.ramp(1, 2, 8)]) * T.Cast("int32x8", B[T.ramp(1, 2, 8)]))
    else:  # pragma: no cover
        raise ValueError(instr)
    TensorIntrin.register(instr.name, desc, impl, override=True)
    _REGISTERED.add(instr.name)


LANE_SUM = "edgec_addp_lane_sum_4x4"


def _register_lane_sum() -> None:
    """sum[o] += acc[o, 0] + .. + acc[o, 3] for 4 channels: two levels of addp."""
    if LANE_SUM in _REGISTERED:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4, 4), "int32", offset_factor=1, scope="local")
        C = T.match_buffer(c, (4,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4, 0:4])
            T.writes(C[0:4])
            for i, j in T.grid(4, 4):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SR", [i, j])
                    C[vi] = C[vi] + A[vi, vj]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4, 4), "int32", offset_factor=1, scope="local")
        C = T.match_buffer(c, (4,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4, 0:4])
            T.writes(C[0:4])
            C[T.ramp(0, 1, 4)] = C.vload([0], "int32x4") + _addp(
                _addp(A.vload([0, 0], "int32x4"), A.vload([1, 0], "int32x4"), T),
                _addp(A.vload([2, 0], "int32x4"), A.vload([3, 0], "int32x4"), T), T)

    TensorIntrin.register(LANE_SUM, desc, impl, override=True)
    _REGISTERED.add(LANE_SUM)


def _smull(a, b, T):
    """8 int8 x int8 -> 8 int16 products."""
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                   a, b, dtype="int16x8")


def _low(v16, T):
    return T.Shuffle([v16], list(range(8)))


def _high(v16, T):
    return T.Shuffle([v16], list(range(8, 16)))


def _saddlp(x, T):
    """Pairs of int16 summed into 4 int32 (LLVM folds a following add into sadalp)."""
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), x, dtype="int32x4")


def _addp(a, b, T):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"),
                                   a, b, dtype="int32x4")
