"""VectorUnit: what the CPU rules know about a device's SIMD unit, as its device file says.

The schedule rules (schedule.py) and the int8 lowering (integer.py) read these facts instead of
guessing them from the target triple or CPU name, so a new CPU is a new device file. The keys
of a device file, all optional (a device that names none gets its facts from LLVM):

- ``vector_bits``: the SIMD register width in bits (NEON 128, AVX2 256, AVX-512 512); the rules
  tile for ``vector_bits / 32`` float32 lanes. A CPU without SIMD keeps 128: LLVM scalarizes
  the 4-lane tiles into 4 independent accumulators.
- ``fma_by_element``: the CPU multiplies a vector by one element of another register
  (AArch64 ``fmla v.4s, w.4s, in.s[k]``), so conv input rows may stay in vector registers.
- ``int8_dot``: the instruction family of the int8 GEMM's reduction step, one of
  ``INT8_DOTS``: ``sdot`` (Armv8.2 dot product), ``smull`` (AArch64 NEON widening multiplies),
  ``vpdpbusd`` (AVX-512 VNNI), ``generic`` (plain vector code that LLVM lowers).
"""

from __future__ import annotations

from dataclasses import dataclass

# "smlad" (Armv7E-M DSP, Cortex-M4/M7) and "mve" (Helium vmladava, Cortex-M55): their steps
# live in targets/cortexm/int8_dot.py, which registers them (integer.register_dot_instr).
INT8_DOTS = ("generic", "smull", "sdot", "vpdpbusd", "smlad", "mve")


@dataclass(frozen=True)
class VectorUnit:
    bits: int = 128
    fma_by_element: bool = False
    int8_dot: str = "generic"

    def __post_init__(self) -> None:
        if self.int8_dot not in INT8_DOTS:
            raise ValueError(f"int8_dot must be one of {', '.join(INT8_DOTS)}, "
                             f"not {self.int8_dot!r}")
        if self.bits < 32 or self.bits & (self.bits - 1):
            raise ValueError(f"vector_bits must be a power of two >= 32, not {self.bits}")

    @property
    def lanes(self) -> int:
        """float32 lanes in one vector register."""
        return self.bits // 32

    @classmethod
    def of_target(cls, target) -> "VectorUnit":
        """LLVM's view of ``target`` (its vector width; no by-element FMA, generic int8): for
        callers that pass a bare tvm Target and no device facts."""
        from tvm.target import codegen

        return cls(bits=int(codegen.llvm_get_vector_width(target)))
