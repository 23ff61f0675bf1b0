"""Compile the kernels of an optimized module to one relocatable object for the target."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from toolchain.errors import ModelError

log = logging.getLogger(__name__)


def kernel_module(mod, names: list[str]):
    """An IRModule holding only the PrimFuncs ``names``, each exported under its own name."""
    import tvm

    funcs = {}
    for gv, func in mod.functions.items():
        if gv.name_hint in names:
            funcs[gv] = func.with_attr("global_symbol", gv.name_hint)
    missing = set(names) - {gv.name_hint for gv in funcs}
    if missing:
        raise RuntimeError(f"kernels missing from the module: {sorted(missing)}")
    return tvm.IRModule(funcs)


def workspace_bytes(kmod) -> int:
    """An upper bound on the scratch memory one kernel call may request.

    Every buffer a kernel allocates is counted (those small enough for the stack too), per
    kernel, and the largest total is kept: the driver resets its workspace between calls.
    """
    from tvm.s_tir import Schedule

    worst = 0
    for gv, func in kmod.functions.items():
        sch = Schedule(func)
        total = 0
        try:
            stack = [sch.get_sblock("root")]
        except Exception:  # noqa: BLE001  (hand-built TIR with no blocks, e.g. TVM's scatter)
            if "alloc" in func.script():
                raise ModelError(f"kernel {gv.name_hint} allocates scratch memory outside "
                                 "any block; its size cannot be planned") from None
            continue
        while stack:
            block = stack.pop()
            for buf in sch.get(block).alloc_buffers:
                n = int(np.prod([int(d) for d in buf.shape], dtype=np.int64))
                total += n * max(1, tvm_bits(buf.dtype) // 8) + 64
            stack.extend(sch.get_child_blocks(block))
        worst = max(worst, total)
    return worst


def tvm_bits(dtype) -> int:
    s = str(dtype)
    if s == "bool":
        return 8
    digits = "".join(ch for ch in s if ch.isdigit())
    return int(digits.split("x")[0]) if digits else 32


def compile_kernels(kmod, target, obj: Path) -> None:
    """Build ``kmod`` for ``target`` and write the object file (no TVM runtime inside)."""
    import tvm

    with tvm.transform.PassContext(opt_level=3):
        exe = tvm.compile(kmod, target=target)
    exe.mod.write_to_file(str(obj))
