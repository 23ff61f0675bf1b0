"""int8 GEMM steps for Cortex-M: SMLAD (the DSP extension of Armv7E-M, M4/M7) and VMLADAVA
(Helium/MVE of Armv8.1-M, M55).

SMLAD: two 16 x 16-bit multiply-adds per instruction.

One reduction step of the int8 GEMM (targets/cpu/qgemm.py) is one int32 accumulator
summing 4 products: the 4 activation bytes and the 4 weight bytes are loaded as one word each,
``sxtb16`` sign-extends bytes 0 and 2 (and, of the word rotated by 8, bytes 1 and 3) into two
int16 halves, and two ``smlad`` add the four products (what CMSIS-NN's ``arm_nn_mat_mult``
kernels do by hand). The weights keep the GEMM's plain [O_pad, K_pad] layout, so nothing else
about the kernel changes. LLVM gets ``llvm.arm.sxtb16`` / ``llvm.arm.smlad`` directly: it does
not form smlad from plain multiply-adds (it picks one ``smlabb`` per product).
"""

from __future__ import annotations

from toolchain.targets.cpu import qgemm

# 2 pixels x 2 channels (4 accumulators, 8 sign-extended operands: the 13 general registers),
# or 1 pixel x 4 channels where a row is odd (qgemm.row_tile: no padded pixel). Measured with
# bench_cortexm on cortex-m4: KWS DS-CNN (rows of 5) 4 x 2 tiles 14.1M instructions (spills),
# 2 x 2 7.1M, 1 x 4 6.3M, 1 x 8 7.9M; ResNet-8 (rows of 32, 16, 8) 2 x 2 24.7M, 1 x 4 27.2M.
SMLAD = qgemm.DotInstr("edgec_smlad_1x4_i8", 1, 4, "int8", tile=(2, 2))
# VMLADAVA.S8: 16 int8 products summed into a general register (one accumulator per
# pixel x channel, 16 bytes of each operand per step: one q-register load each).
MVE_VMLADAV = qgemm.DotInstr("edgec_mve_vmladav_1x16_i8", 1, 16, "int8")


def _desc(n: int):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n,), "int8", offset_factor=1)
        B = T.match_buffer(b, (n,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:1], A[0:n], B[0:n])
            T.writes(C[0:1])
            # The kernel's lane loop (extent 1) stays a loop; its block binds only the bytes.
            for j, t in T.grid(T.int64(1), T.int64(n)):
                with T.sblock("update"):
                    vt = T.axis.remap("R", [t])
                    C[0] = C[0] + T.cast(A[vt], "int32") * T.cast(B[vt], "int32")

    return desc


def register_mve() -> qgemm.DotInstr:
    """As ``register``, for VMLADAVA (``llvm.arm.mve.vmldava``; from a plain add-reduction of
    widened products LLVM makes vldrb.s32 + vmlava.u32, 4 products per instruction)."""
    instr = MVE_VMLADAV
    qgemm.BY_NAME.setdefault(instr.name, instr)
    if instr.name in qgemm._REGISTERED:
        return instr
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16,), "int8", offset_factor=1)
        B = T.match_buffer(b, (16,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:1], A[0:16], B[0:16])
            T.writes(C[0:1])
            # vmldava(unsigned=0, subtract=0, exchange=0, acc, a, b): acc + sum a[i] * b[i]
            C[0] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.arm.mve.vmldava"), T.int32(0), T.int32(0),
                T.int32(0), C[0], A.vload([0], "int8x16"), B.vload([0], "int8x16"),
                dtype="int32")

    TensorIntrin.register(instr.name, _desc(16), impl, override=True)
    qgemm._REGISTERED.add(instr.name)
    return instr


def register() -> qgemm.DotInstr:
    """Register the tensor intrinsic and make the GEMM schedule find the instruction by name
    (``qgemm.BY_NAME``, read from the kernel's ``edgec.qgemm`` attribute)."""
    qgemm.BY_NAME.setdefault(SMLAD.name, SMLAD)
    if SMLAD.name in qgemm._REGISTERED:
        return SMLAD
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    def arm(name, *args):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype="int32")

    def ror8(word):
        u = T.reinterpret(word, dtype="uint32")
        return T.reinterpret(T.shift_right(u, T.uint32(8)) | T.shift_left(u, T.uint32(24)),
                             dtype="int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:1], A[0:4], B[0:4])
            T.writes(C[0:1])
            x = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
            w = T.reinterpret(B.vload([0], "int8x4"), dtype="int32")
            C[0] = arm("llvm.arm.smlad", arm("llvm.arm.sxtb16", ror8(x)),
                       arm("llvm.arm.sxtb16", ror8(w)),
                       arm("llvm.arm.smlad", arm("llvm.arm.sxtb16", x),
                           arm("llvm.arm.sxtb16", w), C[0]))

    TensorIntrin.register(SMLAD.name, _desc(4), impl, override=True)
    qgemm._REGISTERED.add(SMLAD.name)
    return SMLAD


def vcvtr(v):
    """float32 -> int32, rounded to nearest-even (the FPSCR mode, nearest by default) and
    saturated: one ``vcvtr.s32.f32`` (FPv4 has no VRINT; ``round`` would call ``rintf``)."""
    from tvm import tirx

    bits = tirx.call_llvm_pure_intrin("float32", "llvm.arm.vcvtr", v)
    return tirx.reinterpret("int32", bits)


BY_FAMILY = {"smlad": register, "mve": register_mve}


def register_all() -> None:
    """Make the int8 lowering pick these steps for devices whose ``int8_dot`` names them."""
    from toolchain.targets.cpu import integer

    for family, reg in BY_FAMILY.items():
        # FPv4 (M4) has no VRINT; M55's FPv5 and MVE have (and MVE epilogues are vectors).
        integer.register_dot_instr(family, reg(), to_int=vcvtr if family == "smlad" else None)
    from toolchain.targets.cortexm import int8_depthwise as dw

    integer.register_depthwise("smlad", integer.DepthwiseKernel(
        dw.supports, dw.depthwise_smlad, dw.pack_weights))
    from toolchain.targets.cortexm import int8_pointwise as pw

    integer.register_pointwise("smlad", integer.DepthwiseKernel(
        pw.supports, pw.pointwise_smlad, pw.pack_weights))
