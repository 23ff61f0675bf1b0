"""Score MetaSchedule candidates for an emulated target (ARM, RISC-V) by exact instruction counts.

Before: candidate schedules of one kernel (IRModules whose ``main`` is the scheduled PrimFunc)
for a target that only runs under qemu-user here. After: for each candidate, the exact number
of guest instructions ONE call of the kernel executes, counted by the TCG plugin of
examples/armcount (``libcount.so``, ``targets/cpu/profile.count_plugin``).

How: every candidate is built for the device's LLVM target into its own object file (each
exported as ``__tvm_ffi_edgec_cand<i>``, the TVM FFI "safe call" ABI that model.c uses:
arguments are ``TVMFFIAny`` values of type DLTensorPtr on compact 64-byte aligned DLTensors).
A small C harness (``harness_c``) with the same runtime pieces as model.c (the workspace stack
allocator and error buffer of driver_runtime.py, the ARMv7 EABI conversions) fills the
arguments deterministically, then calls each candidate once between two marker system calls
(``PROFILE_MARKER``), after three empty windows that measure the markers' own cost. It is
linked statically with the device's cross compiler and run once under qemu-user for the whole
batch; the plugin reports one window per call. A candidate that crashes the batch is retried
alone, so one bad schedule costs only its own result.

The count of a kernel agrees with ``edgec run OUT --profile`` of the folder built with that
schedule to within a few instructions (call setup): measured 1 on arm-a72, 2 on armv7-a7, 6 on
riscv64 for a 16x8x3x3 conv (tests/test_tune_arm.py checks it on arm-a72).

MetaSchedule is given ``count * 1e-9`` as the candidate's "seconds" (its cost model only ranks
and normalizes), and the hand-vs-tuned decision compares the same counts.

Where the proxy fails: an instruction count is not time on a board. It ignores cache misses,
memory bandwidth, load latency, pipeline stalls and dual issue. A tiling that cuts
instructions (bigger register tiles, more unrolling) but thrashes L1 or the TLB, or one that
is memory-bound either way (large depthwise or elementwise-like convs, big matmuls whose
panels exceed the cache), is scored as faster when it may not be; counts also treat a
``fmla`` and a ``ldr`` as equal cost. Counts are exact and repeatable, which is what a
search needs, but confirm on a device before trusting a small ratio.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from toolchain.errors import ConfigError, ToolFailedError
from toolchain.targets.cpu.cc import find_compiler
from toolchain.targets.cpu.device import CpuDevice
from toolchain.targets.cpu.driver import FFI_DLTENSOR_PTR, PROFILE_MARKER, dl_dtype
from toolchain.targets.cpu.driver_runtime import ARM_EABI_CONVERSIONS, SERIAL_RUNTIME
from toolchain.tools import require, run_tool

log = logging.getLogger(__name__)

EMPTY_WINDOWS = 3
MIN_WORKSPACE = 1 << 20
SECONDS_PER_INSN = 1e-9  # what MetaSchedule is told: a ranking, not a time
_C_TYPES = {"float32": "float", "float64": "double", "float16": "uint16_t", "int8": "int8_t",
            "uint8": "uint8_t", "int16": "int16_t", "uint16": "uint16_t", "int32": "int32_t",
            "uint32": "uint32_t", "int64": "int64_t", "uint64": "uint64_t", "bool": "uint8_t"}


@dataclass(frozen=True)
class Arg:
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Candidate:
    """A built candidate: its object file, its arguments, and its workspace bound."""

    obj: Path
    symbol: str  # the kernel's name in the object: __tvm_ffi_<symbol>
    args: tuple[Arg, ...]
    workspace: int


def args_of(args_info) -> tuple[Arg, ...]:
    """MetaSchedule's ArgInfo list as (shape, dtype); only tensors (kernels have no scalars)."""
    out = []
    for info in args_info:
        if not hasattr(info, "shape"):
            raise ConfigError(f"a kernel argument is not a tensor ({info}); it cannot be counted")
        out.append(Arg(tuple(int(d) for d in info.shape), str(info.dtype)))
    return tuple(out)


def emulator(dev: CpuDevice) -> list[str]:
    """qemu-user for ``dev`` (always, even on a machine of its architecture: the plugin
    counts)."""
    if not dev.qemu:
        raise ConfigError(f"target {dev.name} names no qemu-user emulator; its instructions "
                          "cannot be counted")
    hint = " ".join(p for p in dev.debian_packages if "qemu" in p) or "qemu-user"
    qemu = require(dev.qemu, f"apt-get install {hint}  (Debian/Ubuntu, as root)")
    return [str(qemu), "-cpu", dev.qemu_cpu] if dev.qemu_cpu else [str(qemu)]


def _fill(name: str, arg: Arg, index: int) -> str:
    """A deterministic fill (an LCG per argument): floats in [-1, 1), integers in [-8, 8)."""
    n = int(np.prod(arg.shape, dtype=np.int64)) if arg.shape else 1
    if arg.dtype.startswith("float") and arg.dtype != "float16":
        value = "(float)((int32_t)(s >> 8) - (1 << 23)) / (float)(1 << 23)"
    else:
        value = "(int32_t)(s >> 28) - 8"
    return (f"  s = {0x9E3779B9 ^ (index * 2654435761) & 0xFFFFFFFF}u;\n"
            f"  for (size_t i = 0; i < {n}u; ++i) {{ s = s * 1664525u + 1013904223u; "
            f"{name}[i] = ({_C_TYPES[arg.dtype]})({value}); }}\n")


def harness_c(cands: list[Candidate]) -> str:
    """The counting driver for ``cands`` (see the module doc); argv[1], if given, is the one
    candidate to run."""
    for c in cands:
        for a in c.args:
            if a.dtype not in _C_TYPES:
                raise ConfigError(f"a kernel argument has type {a.dtype}, which the counting "
                                  "harness cannot fill")
    workspace = max([MIN_WORKSPACE, *(c.workspace for c in cands)])
    out = ["#define _GNU_SOURCE", "#include <stddef.h>", "#include <stdint.h>",
           "#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>",
           "#include <unistd.h>", "#include <sys/syscall.h>", "#define EDGEC_ALIGN 64",
           f"static uint8_t edgec_workspace[{workspace}] __attribute__((aligned(64)));",
           "typedef struct { int32_t device_type; int32_t device_id; } edgec_dl_device;",
           "typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } edgec_dl_dtype;",
           "typedef struct { void *data; edgec_dl_device device; int32_t ndim; "
           "edgec_dl_dtype dtype; int64_t *shape; int64_t *strides; uint64_t byte_offset; "
           "} edgec_dl_tensor;",
           "typedef struct { int32_t type_index; uint32_t zero_padding; "
           "union { int64_t v_int64; void *v_ptr; } v; } edgec_ffi_any;",
           SERIAL_RUNTIME, ARM_EABI_CONVERSIONS,
           "void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, "
           "int32_t n) {",
           "  (void)parts; (void)n; if (kind) strncpy(edgec_error, kind, sizeof(edgec_error) - 1);",
           "}",
           f"static void mark(long what) {{ syscall({hex(PROFILE_MARKER)}, what); }}"]
    # candidates of one workload share their argument buffers
    buffers: dict[tuple[int, Arg], str] = {}
    fills = []
    for c in cands:
        for pos, a in enumerate(c.args):
            if (pos, a) not in buffers:
                name = f"buf{len(buffers)}"
                buffers[(pos, a)] = name
                n = int(np.prod(a.shape, dtype=np.int64)) if a.shape else 1
                out.append(f"static {_C_TYPES[a.dtype]} {name}[{max(n, 1)}] "
                           "__attribute__((aligned(64)));")
                dims = ", ".join(str(d) for d in a.shape) or "1"
                out.append(f"static int64_t {name}_shape[] = {{{dims}}};")
                code, bits = dl_dtype(a.dtype)
                out.append(f"static edgec_dl_tensor {name}_t = {{{name}, {{1, 0}}, "
                           f"{len(a.shape)}, {{{code}, {bits}, 1}}, {name}_shape, NULL, 0}};")
                fills.append(_fill(name, a, len(buffers)))
    for i, c in enumerate(cands):
        out.append(f"int32_t __tvm_ffi_{c.symbol}(void *, const edgec_ffi_any *, int32_t, "
                   "edgec_ffi_any *);")
        args = ", ".join(f"{{{FFI_DLTENSOR_PTR}, 0, {{.v_ptr = &{buffers[(p, a)]}_t}}}}"
                         for p, a in enumerate(c.args))
        out.append(f"static const edgec_ffi_any args{i}[] = {{{args}}};")
    out.append("typedef int32_t (*kernel_fn)(void *, const edgec_ffi_any *, int32_t, "
               "edgec_ffi_any *);")
    table = ", ".join(f"{{__tvm_ffi_{c.symbol}, args{i}, {len(c.args)}}}"
                      for i, c in enumerate(cands))
    out.append("static const struct { kernel_fn fn; const edgec_ffi_any *args; int32_t n; } "
               f"cands[] = {{{table}}};")
    out += ["int main(int argc, char **argv) {", "  uint32_t s;", *fills,
            f"  int first = 0, last = {len(cands)};",
            "  if (argc > 1) { first = atoi(argv[1]); last = first + 1; }",
            f"  for (int i = 0; i < {EMPTY_WINDOWS}; ++i) {{ mark(1); mark(2); }}",
            "  for (int i = first; i < last; ++i) {",
            "    edgec_ffi_any result = {0, 0, {0}};",
            "    edgec_ws_top = 0;",
            "    mark(1);",
            "    int32_t rc = cands[i].fn(NULL, cands[i].args, cands[i].n, &result);",
            "    mark(2);",
            '    printf("done %d %d\\n", i, (int)rc);',
            "    fflush(stdout);",
            "  }",
            "  return 0;",
            "}", ""]
    return "\n".join(out)


class InstructionCounter:
    """Builds candidates for ``dev`` and counts one call of each under qemu (module doc)."""

    def __init__(self, dev: CpuDevice, compiler: str = "auto", timeout: float = 600):
        from toolchain.targets.cpu.profile import count_plugin

        self.dev = dev
        self.cc = find_compiler(dev, compiler)
        self.qemu = emulator(dev)
        self.plugin = count_plugin()
        self.timeout = timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="edgec-tune-count-")
        self.work = Path(self._tmp.name)
        self._n = 0

    @property
    def where(self) -> str:
        return " ".join(Path(a).name if i == 0 else a for i, a in enumerate(self.qemu))

    def build(self, mod, target, args_info=()) -> Candidate:
        """``mod``'s ``main`` built for ``target`` into an object file of its own (the
        arguments may be given later, with ``with_args``)."""
        import tvm

        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        from toolchain.targets.cpu.codegen import workspace_bytes

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        symbol = f"edgec_cand{self._n}"  # unique: candidates are linked side by side
        self._n += 1
        kmod = tvm.IRModule({symbol: mod["main"].with_attr("global_symbol", symbol)})
        obj = self.work / f"{symbol}.o"
        with tvm.transform.PassContext(opt_level=3):
            built = tvm.tirx.build(kmod, target=target)
        built.write_to_file(str(obj))
        return Candidate(obj, symbol, args_of(args_info), workspace_bytes(kmod))

    @staticmethod
    def with_args(cand: Candidate, args_info) -> Candidate:
        return replace(cand, args=args_of(args_info))

    def compare(self, mods, target, args_info) -> list[int]:
        """One call's instructions for each module (the same workload), in one run."""
        counts = self.count([self.build(m, target, args_info) for m in mods])
        bad = [c for c in counts if isinstance(c, str)]
        if bad:
            raise ToolFailedError(f"counting a kernel's instructions under {self.where}: {bad[0]}")
        return counts

    def count(self, cands: list[Candidate]) -> list[int | str]:
        """One call's instructions per candidate (an error message for one that failed)."""
        if not cands:
            return []
        name = f"batch{self._n}"  # beside the candidates' objects (the linker takes names)
        self._n += 1
        src, obj, binary = (self.work / f"{name}{ext}" for ext in (".c", ".o", ""))
        src.write_text(harness_c(cands))
        self.cc.compile(src, obj, self.work)
        self.cc.link([obj, *(c.obj for c in cands)], binary, self.work)
        results: list[int | str] = ["not run"] * len(cands)
        done = self._run(binary, None, results)
        if done < len(cands):  # a crash: count the rest one by one
            for i in range(done, len(cands)):
                self._run(binary, i, results)
        for path in (src, obj, binary, *(c.obj for c in cands)):
            path.unlink(missing_ok=True)
        return results

    def _run(self, binary: Path, only: int | None, results: list) -> int:
        """Run the harness (all candidates, or only one); fill ``results``; return how many
        candidates finished."""
        from toolchain.targets.cpu.runner import clean_env

        rep = binary.with_name(f"count{'' if only is None else only}.txt")
        argv = [*self.qemu, "-plugin", f"{self.plugin},out={rep},marker={PROFILE_MARKER:x}",
                binary, *([] if only is None else [str(only)])]
        try:
            proc = run_tool(argv, what="counting candidate instructions", timeout=self.timeout,
                            env=clean_env(), cwd=binary.parent)
            stdout, failed = proc.stdout.decode(), ""
        except ToolFailedError as exc:
            stdout, failed = "", str(exc)[:300]
        windows = []
        if rep.is_file():
            windows = [int(line.split()[3]) for line in rep.read_text().splitlines()
                       if line.startswith("call ")]
            rep.unlink()
        done = [line.split() for line in stdout.splitlines() if line.startswith("done ")]
        if failed or len(windows) != EMPTY_WINDOWS + len(done):
            if only is not None:
                results[only] = f"the counting run failed: {failed or 'no count'}"
            return len(done)
        empty = min(windows[:EMPTY_WINDOWS])
        for (_, i, rc), w in zip(done, windows[EMPTY_WINDOWS:]):
            results[int(i)] = (w - empty) if rc == "0" else f"the kernel returned {rc}"
        return len(done)
