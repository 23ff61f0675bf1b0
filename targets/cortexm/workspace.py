"""The kernels' scratch memory as the compiled code asks for it, for a static SRAM buffer.

``toolchain.targets.cpu.codegen.workspace_bytes`` counts every buffer a scheduled kernel declares
at its full shape. TVM's lowering then places each buffer in the innermost scope that uses it
and shrinks it to the region touched there (``PlanAndUpdateBufferAllocationLocation``,
``CompactBufferAllocation``): an im2col tile computed per row tile is a few hundred bytes, not
the whole im2col matrix. The driver's workspace allocator gives a scope's buffer back when the
scope ends (last in, first out), so the sum of the compacted buffers bounds what one kernel
call holds at once. On MCUs the difference decides whether a model fits: ResNet-8 int8 needs
2.5 KB of workspace, not 272 KB.
"""

from __future__ import annotations


def compacted_workspace_bytes(kmod) -> int:
    """An upper bound on one kernel call's workspace once TVM has compacted its buffers."""
    import tvm
    from tvm import s_tir

    from toolchain.targets.cpu import codegen

    passes = tvm.ir.transform.Sequential([
        s_tir.transform.CanonicalizeLoop(), s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation()])
    with tvm.transform.PassContext(opt_level=3):
        compacted = passes(kmod)
    return codegen.workspace_bytes(compacted)
