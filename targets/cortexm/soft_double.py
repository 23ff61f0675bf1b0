"""float64 on a single-precision FPU (Cortex-M4F): the kernels' calls to the soft-float helpers,
made right.

LLVM compiles a float64 operation of a kernel for thumbv7em + fpv4-sp-d16 into a call to the
helper's generic name (``__muldf3``, ``__adddf3``, ``__extendsfdf2``, ...) with the hard-float
convention: operands and result in s0-s3 (d0, d1). GNU libgcc defines those names as aliases of
its ``__aeabi_*`` helpers, which take and return doubles in core registers (the base AAPCS,
always): linked as they are, a kernel reads garbage (a float32 -> float64 -> float32 model gave
every output wrong on the M4; the int8 BatchNormalization kernel's float64 steps 4044 codes of
4096). With a double-precision FPU there are no such calls.

So the kernels' references are renamed (objcopy ``--redefine-sym``) to ``edgec_vfp_*`` shims
that this module writes in C: gcc compiles each with the hard-float convention the kernels use,
and its body (``a * b``, a cast, a comparison) into the right ``__aeabi_*`` call.
"""

from __future__ import annotations

# generic helper -> (C return type, C parameters, body expression); the comparisons return
# what libgcc's do (the sign or zeroness the caller tests; unordered as the caller expects).
_HELPERS = {
    "__adddf3": ("double", "double a, double b", "a + b"),
    "__subdf3": ("double", "double a, double b", "a - b"),
    "__muldf3": ("double", "double a, double b", "a * b"),
    "__divdf3": ("double", "double a, double b", "a / b"),
    "__negdf2": ("double", "double a", "-a"),
    "__extendsfdf2": ("double", "float a", "(double)a"),
    "__truncdfsf2": ("float", "double a", "(float)a"),
    "__fixdfsi": ("int", "double a", "(int)a"),
    "__fixunsdfsi": ("unsigned", "double a", "(unsigned)a"),
    "__floatsidf": ("double", "int a", "(double)a"),
    "__floatunsidf": ("double", "unsigned a", "(double)a"),
    # 0 iff equal (NaN: nonzero)
    "__eqdf2": ("int", "double a, double b", "!(a == b)"),
    "__nedf2": ("int", "double a, double b", "!(a == b)"),
    # < 0 iff a < b, <= 0 iff a <= b (NaN: 1)
    "__ltdf2": ("int", "double a, double b", "a < b ? -1 : a == b ? 0 : 1"),
    "__ledf2": ("int", "double a, double b", "a < b ? -1 : a == b ? 0 : 1"),
    # > 0 iff a > b, >= 0 iff a >= b (NaN: -1)
    "__gtdf2": ("int", "double a, double b", "a > b ? 1 : a == b ? 0 : -1"),
    "__gedf2": ("int", "double a, double b", "a > b ? 1 : a == b ? 0 : -1"),
    "__unorddf2": ("int", "double a, double b", "a != a || b != b"),
}
PREFIX = "edgec_vfp"


def shims(undefined: set[str]) -> tuple[dict[str, str], str]:
    """For the helpers among a kernel object's ``undefined`` symbols: (old name -> shim name,
    the C source defining the shims); ({}, "") when it calls none."""
    used = sorted(undefined & _HELPERS.keys())
    renames = {name: PREFIX + name for name in used}
    lines = ["/* float64 helpers with the hard-float convention LLVM calls them with",
             " * (targets/cortexm/soft_double.py); gcc makes each an __aeabi_* call. */"]
    for name in used:
        ret, params, body = _HELPERS[name]
        lines.append(f"{ret} {renames[name]}({params});")
        lines.append(f"{ret} {renames[name]}({params}) {{ return {body}; }}")
    return renames, "\n".join(lines) + "\n" if used else ""
