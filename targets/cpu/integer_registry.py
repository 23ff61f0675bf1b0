"""What target folders register for the integer lowering (integer.py): per ``int8_dot``
family of devices, the GEMM's dot instruction and rounding, and their own depthwise and
pointwise kernels (e.g. targets/cortexm/int8_dot.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from toolchain.targets.cpu import qgemm
from toolchain.targets.cpu.vector import VectorUnit

DOT_INSTRS = {"sdot": qgemm.SDOT, "vpdpbusd": qgemm.VNNI, "generic": qgemm.GENERIC}
# int8_dot family -> its devices' float -> int32 rounding conversion (qgemm.requantize).
TO_INT: dict[str, Callable] = {}


def register_dot_instr(int8_dot: str, instr: qgemm.DotInstr, *,
                       to_int: Callable | None = None) -> None:
    """A target folder's own int8 GEMM step for devices whose ``int8_dot`` names it (its
    tensor intrinsic registered by the folder, e.g. targets/cortexm/int8_dot.py).
    ``to_int``: their rounding float -> int32 conversion, for requantize."""
    DOT_INSTRS[int8_dot] = instr
    if to_int is not None:
        TO_INT[int8_dot] = to_int
    else:
        TO_INT.pop(int8_dot, None)


@dataclass(frozen=True)
class DepthwiseKernel:
    """A target folder's own int8 depthwise kernel: ``supports(x_shape, x_dtype)``,
    ``build(x_shape, x_dtype, geom, *, in_zero, out_dtype, out_zero, clamp, to_int)``
    -> a scheduled PrimFunc (X, W, bias, scale, Y), ``pack_weights(w_rsc)`` -> its W."""

    supports: Callable
    build: Callable
    pack_weights: Callable


DEPTHWISE: dict[str, DepthwiseKernel] = {}


def register_depthwise(int8_dot: str, kernel: DepthwiseKernel) -> None:
    """Devices whose ``int8_dot`` is this family take ``kernel`` for int8 depthwise convs
    (where it ``supports`` the input; elsewhere qdepthwise.py's)."""
    DEPTHWISE[int8_dot] = kernel


POINTWISE: dict[str, DepthwiseKernel] = {}


def register_pointwise(int8_dot: str, kernel: DepthwiseKernel) -> None:
    """Devices whose ``int8_dot`` is this family take ``kernel`` for int8 GEMMs (1x1 convs,
    matmuls) where ``kernel.supports(x_shape, x_dtype, geom, out_channels)``; its ``build``
    takes ``(x_shape, x_dtype, geom, out_channels, *, out_dtype, out_zero, clamp, to_int)``
    and ``pack_weights`` the [O, K] int8 weights; elsewhere the generic GEMM."""
    POINTWISE[int8_dot] = kernel


def instr_for(vector: VectorUnit | None, symmetric_weights: bool) -> qgemm.DotInstr:
    """The int8 GEMM's instruction for the device's ``int8_dot`` fact; with weights in
    [-127, 127], AArch64 NEON sums pairs of products in int16 (3 instructions per 16 products
    instead of 4)."""
    if vector is None:
        return qgemm.GENERIC
    if vector.int8_dot == "smull":
        return qgemm.NEON_SMLAL if symmetric_weights else qgemm.NEON_SMULL
    if vector.int8_dot not in DOT_INSTRS:
        raise ValueError(f"int8_dot '{vector.int8_dot}' has no registered instruction "
                         "(its target folder registers it)")
    return DOT_INSTRS[vector.int8_dot]
