"""Generate the C driver: model.h (the API), model.c (the static plan), main.c (the CLI).

Before: a KernelPlan, its MemoryPlan, the workspace size, and the TVM kernels compiled to an
object that exports ``__tvm_ffi_<kernel>`` (TVM FFI "safe call" ABI: each argument a
DLTensor pointer). After: C sources with no TVM runtime dependency: tensors are static
DLTensor descriptors into one static arena, weights are an assembled binary blob, and the
kernels' workspace requests are served by a bump allocator over a static buffer.

With ``threads`` > 1 the kernels hold parallel loops, which TVM's codegen runs through the
``__TVMBackendParallelLaunch`` function pointer: the driver then adds a static pool of
``threads - 1`` pthreads (created on the first launch, no heap of its own) and gives every
thread its own workspace stack, since TVM allocates scratch inside the parallel body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from toolchain.errors import ModelError
from toolchain.optimizer.memplan import ALIGN, MemoryPlan
from toolchain.optimizer.plan import CONST, KernelPlan
from toolchain.targets.cpu.driver_runtime import (ARM_EABI_CONVERSIONS, SERIAL_RUNTIME,
                                                   THREADED_RUNTIME)

# DLPack type codes (dlpack.h): int, uint, float, bfloat, bool.
_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}
_C_TYPES = {"float32": "float", "float64": "double", "int8": "int8_t", "uint8": "uint8_t",
            "int16": "int16_t", "uint16": "uint16_t", "int32": "int32_t", "uint32": "uint32_t",
            "int64": "int64_t", "uint64": "uint64_t", "bool": "uint8_t", "float16": "uint16_t"}
FFI_DLTENSOR_PTR = 7  # TVMFFITypeIndex::kTVMFFIDLTensorPtr


def dl_dtype(dtype: str) -> tuple[int, int]:
    dt = np.dtype(dtype)
    if dt.kind not in _DL_CODES:  # e.g. ml_dtypes' bfloat16/float8/int4 (kind 'V')
        raise ModelError(f"a tensor has type {dtype}, which the C driver cannot describe")
    bits = 8 if dt == np.bool_ else dt.itemsize * 8
    return _DL_CODES[dt.kind], bits


@dataclass(frozen=True)
class IndexCheck:
    """A graph input read as Gather indices: each value must lie in [-bound, bound)."""

    input: int  # position among the plan's inputs
    bound: int


def _gather_axis_bound(data: tuple[int, ...], idx: tuple[int, ...],
                       out: tuple[int, ...]) -> int | None:
    """The size of the axis a take(data, idx) -> out gathers along (every axis that fits
    the shapes has the same size), or None if none fits."""
    fits = [data[a] for a in range(len(data))
            if out == data[:a] + idx + data[a + 1:]]
    return min(fits) if fits else None


def index_checks(plan: KernelPlan) -> list[IndexCheck]:
    """Integer graph inputs that feed a Gather (TVM's ``take`` kernel) as its indices,
    directly or through the importer's negative-index normalization (an elementwise kernel
    from the input to the indices): an index outside its axis would read out of bounds."""
    producer = {out: call for call in plan.calls for out in call.outputs}
    inputs = {b: pos for pos, b in enumerate(plan.inputs)}
    checks: dict[int, int] = {}
    for call in plan.calls:
        if call.kernel.rstrip("0123456789") != "take" or len(call.inputs) != 2:
            continue
        data, idx = (plan.buffers[b] for b in call.inputs)
        out = plan.buffers[call.outputs[0]]
        if np.dtype(idx.dtype).kind not in "iu":
            continue
        bound = _gather_axis_bound(data.shape, idx.shape, out.shape)
        src = idx.id
        if src not in inputs and src in producer:  # where(i < 0, i + n, i)
            src = next((b for b in producer[src].inputs if b in inputs
                        and plan.buffers[b].shape == idx.shape
                        and plan.buffers[b].dtype == idx.dtype), src)
        if bound is not None and src in inputs:
            pos = inputs[src]
            checks[pos] = min(bound, checks.get(pos, bound))
    return [IndexCheck(pos, bound) for pos, bound in sorted(checks.items())]


def _out_of_range(value: str, dtype: str, bound: int) -> str:
    """C condition: ``value`` (of ``dtype``) lies outside [-bound, bound)."""
    if np.dtype(dtype).kind == "u":  # never negative; and no wrap-around to "negative"
        return f"{value} >= {bound}u"
    return f"(int64_t){value} < -{bound}LL || (int64_t){value} >= {bound}LL"


def c_ident(name: str) -> str:
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return ident if not ident[:1].isdigit() else "_" + ident


@dataclass(frozen=True)
class WeightLayout:
    offsets: list[int]  # per constant
    total: int


def layout_weights(plan: KernelPlan) -> tuple[WeightLayout, bytes]:
    """Pack all constants into one blob, each at a 64-byte aligned offset."""
    offsets, chunks, pos = [], [], 0
    for arr in plan.constants:
        pad = (-pos) % ALIGN
        chunks.append(b"\0" * pad)
        pos += pad
        offsets.append(pos)
        data = np.ascontiguousarray(arr).tobytes()
        chunks.append(data)
        pos += len(data)
    return WeightLayout(offsets, pos), b"".join(chunks)


def weights_asm(blob_name: str) -> str:
    """Assembly that embeds the weight blob (``.incbin``): fast to build at any size."""
    return (".section .rodata.edgec_weights,\"a\"\n"
            f".balign {ALIGN}\n.global edgec_weights\nedgec_weights:\n"
            f".incbin \"{blob_name}\"\n.byte 0\n"
            ".section .note.GNU-stack,\"\",%progbits\n")


def header(plan: KernelPlan, input_names: list[str], output_names: list[str],
           model_name: str, threads: int = 1) -> str:
    ins = [plan.buffers[b] for b in plan.inputs]
    outs = [plan.buffers[b] for b in plan.outputs]
    lines = [
        "/* model.h: generated by edgec. Embeddable inference for " + model_name + ".",
        " *",
        *_link_note(threads),
        " * Not reentrant: one inference at a time per process.",
        " *",
        " *   int edgec_model_run(const void *input, void *output);",
        " *     input:  all inputs back to back, in order (EDGEC_MODEL_INPUT_BYTES in total);",
        " *     output: room for all outputs back to back (EDGEC_MODEL_OUTPUT_BYTES).",
        " *     Returns 0 on success, EDGEC_MODEL_BAD_INPUT (-2) when an input holds an index",
        " *     out of its range (Gather indices), -1 when a kernel fails;",
        " *     edgec_model_last_error() says why.",
        " *   int edgec_model_run_multi(const void *const inputs[], void *const outputs[]);",
        " *     the same with one pointer per input and output.",
        " * Buffers need no particular alignment. Tensors are dense, row-major (C order).",
        " */",
        "#ifndef EDGEC_MODEL_H",
        "#define EDGEC_MODEL_H",
        *_thread_lines(threads),
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        "#define EDGEC_MODEL_BAD_INPUT (-2)",
        f"#define EDGEC_MODEL_NUM_INPUTS {len(ins)}",
        f"#define EDGEC_MODEL_NUM_OUTPUTS {len(outs)}",
        f"#define EDGEC_MODEL_INPUT_BYTES {sum(b.nbytes for b in ins)}u",
        f"#define EDGEC_MODEL_OUTPUT_BYTES {sum(b.nbytes for b in outs)}u",
    ]
    for kind, bufs, names in (("INPUT", ins, input_names), ("OUTPUT", outs, output_names)):
        offset = 0
        for i, (b, name) in enumerate(zip(bufs, names)):
            p = f"EDGEC_MODEL_{kind}{i}"
            lines += [
                f"/* {kind.lower()} {i}: '{name}' {b.dtype}{list(b.shape)} */",
                f'#define {p}_NAME "{name}"',
                f"#define {p}_DTYPE \"{b.dtype}\"",
                f"typedef {_C_TYPES.get(b.dtype, 'uint8_t')} edgec_model_{kind.lower()}{i}_t;",
                f"#define {p}_NDIM {len(b.shape)}",
                f"#define {p}_SHAPE {{{', '.join(str(d) for d in b.shape) or '1'}}}",
                f"#define {p}_ELEMENTS {int(np.prod(b.shape, dtype=np.int64))}u",
                f"#define {p}_BYTES {b.nbytes}u",
                f"#define {p}_OFFSET {offset}u",
            ]
            offset += b.nbytes
    lines += [
        "",
        "int edgec_model_run(const void *input, void *output);",
        "int edgec_model_run_multi(const void *const inputs[], void *const outputs[]);",
        "const char *edgec_model_last_error(void);",
        "/* Static memory the model uses, in bytes (activations, kernel scratch, weights). */",
        "extern const size_t edgec_model_arena_bytes;",
        "extern const size_t edgec_model_workspace_bytes;",
        "extern const size_t edgec_model_weight_bytes;",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "#endif /* EDGEC_MODEL_H */",
        "",
    ]
    return "\n".join(lines)


def _link_note(threads: int) -> list[str]:
    if threads <= 1:
        return [" * Link libmodel.a (and -lm). No heap, no threads, no TVM runtime: all memory is "
                "static."]
    return [f" * Link libmodel.a with -pthread (and -lm). Kernels run on {threads} threads (a "
            f"static pool of {threads - 1}",
            " * pthreads, created on the first run); no heap of its own, no TVM runtime."]


def _thread_lines(threads: int) -> list[str]:
    if threads <= 1:  # single-threaded output stays exactly as it was
        return []
    return ["/* Kernels use a pool of threads: link with -pthread. */",
            f"#define EDGEC_MODEL_THREADS {threads}",
            "#define EDGEC_MODEL_NEEDS_PTHREAD 1"]


_PRELUDE = """\
#include <stdint.h>
#include <string.h>
#include "model.h"

/* The subset of the DLPack and TVM FFI ABI that compiled kernels use. */
typedef struct { int32_t device_type; int32_t device_id; } edgec_dl_device;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } edgec_dl_dtype;
typedef struct {
  void *data; edgec_dl_device device; int32_t ndim; edgec_dl_dtype dtype;
  int64_t *shape; int64_t *strides; uint64_t byte_offset;
} edgec_dl_tensor;
typedef struct {
  int32_t type_index; uint32_t zero_padding;
  union { int64_t v_int64; void *v_ptr; } v;
} edgec_ffi_any;
typedef int32_t (*edgec_kernel)(void *, const edgec_ffi_any *, int32_t, edgec_ffi_any *);

extern const uint8_t edgec_weights[];

@RUNTIME@
@CONVERSIONS@
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {
  size_t len = 0;
  edgec_error[0] = 0;
  if (kind) { strncpy(edgec_error, kind, sizeof(edgec_error) - 1); len = strlen(edgec_error); }
  for (int32_t i = 0; i < n && len + 2 < sizeof(edgec_error); ++i) {
    if (!parts[i]) continue;
    strncat(edgec_error, len ? ": " : "", sizeof(edgec_error) - len - 1);
    strncat(edgec_error, parts[i], sizeof(edgec_error) - strlen(edgec_error) - 1);
    len = strlen(edgec_error);
  }
}

const char *edgec_model_last_error(void) { return edgec_error; }
"""


# Decimal digits of an integer into an error message (no printf in the library).
PUT_INT_C = """\
static char *edgec_put_int(char *p, int64_t v) {
  char digits[24];
  int n = 0;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do { digits[n++] = (char)('0' + (int)(u % 10)); u /= 10; } while (u);
  if (v < 0) *p++ = '-';
  while (n) *p++ = digits[--n];
  return p;
}
"""

_INDEX_ERROR_C = PUT_INT_C + """
/* An index outside its axis: say which input, element and value, and refuse to run. */
static int edgec_index_error(const char *input, size_t element, int64_t value, int64_t bound) {
  char *p = edgec_error, *end = edgec_error + sizeof(edgec_error) - 128;  /* room for the numbers */
  const char *parts[] = {"input '", input, "' element "};
  for (int i = 0; i < 3; ++i)
    for (const char *c = parts[i]; *c && p < end; ++c) *p++ = *c;
  p = edgec_put_int(p, (int64_t)element);
  for (const char *c = ": index "; *c; ++c) *p++ = *c;
  p = edgec_put_int(p, value);
  for (const char *c = " is outside [-"; *c; ++c) *p++ = *c;
  p = edgec_put_int(p, bound);
  *p++ = ',';
  *p++ = ' ';
  p = edgec_put_int(p, bound);
  *p++ = ')';
  *p = 0;
  return EDGEC_MODEL_BAD_INPUT;
}
"""


def workspace_total(workspace_bytes: int, threads: int = 1) -> int:
    """Static workspace: one stack per thread when kernels run in parallel."""
    if threads <= 1:
        return workspace_bytes
    return threads * (-(-max(workspace_bytes, ALIGN) // ALIGN) * ALIGN)


# The profiling build (cc -DEDGEC_PROFILE, made by ``edgec run OUT --profile``, see
# targets/cpu/profile.py): each kernel call is timed, or framed by marker system calls that the
# counting qemu plugin (examples/armcount) turns into one instruction window per call. Without
# the macro the preprocessor drops all of it: the normal build is what it always was.
PROFILE_MARKER = 0x7C0DE  # a system call number no kernel has: it only returns ENOSYS

PROFILE_C = """
#ifdef EDGEC_PROFILE
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int edgec_profile_mode;  /* 0: off; 1: time each call; 2: marker system calls around each */
const int edgec_profile_num_calls = @N@;
double edgec_profile_seconds[@CALLS@];  /* mode 1: each call's seconds in the last run */
static struct timespec edgec_profile_t0;
const char *edgec_profile_kernel(int i) { return edgec_calls[i].name; }
void edgec_profile_mark(long what) { syscall(""" + hex(PROFILE_MARKER) + """, what); }
static void edgec_profile_enter(void) {
  if (edgec_profile_mode == 1) clock_gettime(CLOCK_MONOTONIC, &edgec_profile_t0);
  else if (edgec_profile_mode == 2) edgec_profile_mark(1);
}
static void edgec_profile_leave(int i) {
  if (edgec_profile_mode == 1) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (i >= 0) edgec_profile_seconds[i] = (double)(t.tv_sec - edgec_profile_t0.tv_sec)
                                           + (t.tv_nsec - edgec_profile_t0.tv_nsec) * 1e-9;
  } else if (edgec_profile_mode == 2) {
    edgec_profile_mark(2);
  }
}
/* the hooks' own cost: an empty window (mode 2) on exactly the path a call's window takes */
void edgec_profile_empty(void) { edgec_profile_enter(); edgec_profile_leave(-1); }
#define EDGEC_PROFILE_ENTER() edgec_profile_enter()
#define EDGEC_PROFILE_LEAVE(i) edgec_profile_leave(i)
#else
#define EDGEC_PROFILE_ENTER() ((void)0)
#define EDGEC_PROFILE_LEAVE(i) ((void)0)
#endif
"""


def model_c(plan: KernelPlan, mem: MemoryPlan, weights: WeightLayout,
            workspace_bytes: int, threads: int = 1, input_checks: str = "") -> str:
    """The plan as C: static tensors, argument lists, and the run loop.

    ``workspace_bytes`` bounds one kernel call's scratch on one thread. ``input_checks``: C
    statements run on the inputs in the arena before the kernels (they may return an error)."""
    total = workspace_total(workspace_bytes, threads)
    out = ["/* model.c: generated by edgec. The static execution plan; see model.h for the API. */",
           "#ifdef EDGEC_PROFILE", "#define _GNU_SOURCE  /* clock_gettime, syscall */", "#endif",
           "#include <stddef.h>", "#include <stdint.h>", f"#define EDGEC_ALIGN {ALIGN}"]
    if threads > 1:
        out += [f"#define EDGEC_THREADS {threads}",
                f"#define EDGEC_WS_SLOT {total // threads}u"]
    out += [f"static uint8_t edgec_arena[{max(mem.arena_bytes, ALIGN)}] "
            f"__attribute__((aligned({ALIGN})));",
            f"static uint8_t edgec_workspace[{max(total, ALIGN)}] "
            f"__attribute__((aligned({ALIGN})));",
            _PRELUDE.replace("@RUNTIME@", THREADED_RUNTIME if threads > 1 else SERIAL_RUNTIME)
            .replace("@CONVERSIONS@", ARM_EABI_CONVERSIONS),
            f"const size_t edgec_model_arena_bytes = {mem.arena_bytes};",
            f"const size_t edgec_model_workspace_bytes = {total};",
           f"const size_t edgec_model_weight_bytes = {weights.total};",
           ""]
    for k in plan.kernels():
        out.append(f"int32_t __tvm_ffi_{k}(void *, const edgec_ffi_any *, int32_t, edgec_ffi_any *);")
    out.append("")
    used = sorted({b for c in plan.calls for b in c.args} | set(plan.inputs) | set(plan.outputs))
    for b in used:
        buf = plan.buffers[b]
        dims = ", ".join(str(d) for d in buf.shape) or "1"
        out.append(f"static int64_t edgec_shape_{b}[] = {{{dims}}};")
    out.append("static edgec_dl_tensor edgec_tensors[] = {")
    index = {}
    for pos, b in enumerate(used):
        buf = plan.buffers[b]
        index[b] = pos
        if buf.kind == CONST:
            data = f"(void *)(edgec_weights + {weights.offsets[buf.index]})"
        else:
            data = f"edgec_arena + {mem.offsets[b]}"
        code, bits = dl_dtype(buf.dtype)
        out.append(f"  {{{data}, {{1, 0}}, {len(buf.shape)}, {{{code}, {bits}, 1}}, "
                   f"edgec_shape_{b}, NULL, 0}},  /* buffer {b}: {buf.kind} {buf.dtype}"
                   f"{list(buf.shape)} */")
    out.append("};")
    out.append("")
    for i, call in enumerate(plan.calls):
        args = ", ".join(f"{{{FFI_DLTENSOR_PTR}, 0, {{.v_ptr = &edgec_tensors[{index[b]}]}}}}"
                         for b in call.args)
        out.append(f"static const edgec_ffi_any edgec_args_{i}[] = {{{args}}};")
    out.append("")
    out.append("static const struct { edgec_kernel fn; const edgec_ffi_any *args; int32_t n; "
               "const char *name; } edgec_calls[] = {")
    for i, call in enumerate(plan.calls):
        out.append(f'  {{__tvm_ffi_{call.kernel}, edgec_args_{i}, {len(call.args)}, "{call.kernel}"}},')
    if not plan.calls:
        out.append("  {NULL, NULL, 0, NULL},")
    out.append("};")
    out.append(f"static const int edgec_num_calls = {len(plan.calls)};")
    out.append(PROFILE_C.replace("@CALLS@", str(max(len(plan.calls), 1)))
               .replace("@N@", str(len(plan.calls))))
    # Inputs are copied into the arena (the caller's buffers need no alignment); outputs are
    # copied out of wherever they live (the arena, an input or a weight).
    checks = index_checks(plan)
    if checks:
        out.append(_INDEX_ERROR_C)
    # The kernel calls, on whatever the arena holds (model_run copies the inputs in first;
    # a language model's driver writes its token and position there and keeps the cache).
    out.append("static int edgec_run_plan(void) {")
    out.append("  for (int i = 0; i < edgec_num_calls; ++i) {")
    out.append("    edgec_ffi_any result = {0, 0, {0}};")
    out.append("    EDGEC_PROFILE_ENTER();")
    out.append("    edgec_ws_reset();" if threads > 1 else "    edgec_ws_top = 0;")
    out.append("    int32_t rc = edgec_calls[i].fn(NULL, edgec_calls[i].args, edgec_calls[i].n, "
               "&result);")
    out.append("    EDGEC_PROFILE_LEAVE(i);")
    out.append("    if (rc != 0) {")
    out.append("      if (!edgec_error[0]) strncpy(edgec_error, edgec_calls[i].name, sizeof(edgec_error) - 1);")
    out.append("      return -1;")
    out.append("    }")
    out.append("  }")
    out.append("  return 0;")
    out.append("}")
    out.append("")
    out.append("int edgec_model_run_multi(const void *const inputs[], void *const outputs[]) {")
    for i, b in enumerate(plan.inputs):
        out.append(f"  memcpy(edgec_arena + {mem.offsets[b]}, inputs[{i}], "
                   f"{plan.buffers[b].nbytes});")
    out.append("  edgec_error[0] = 0;")
    if input_checks:
        out.append(input_checks)
    for chk in checks:  # in the arena the values are aligned
        buf = plan.buffers[plan.inputs[chk.input]]
        n = int(np.prod(buf.shape, dtype=np.int64))
        out += [f"  {{  /* input {chk.input} holds Gather indices: each in [-{chk.bound}, "
                f"{chk.bound}) */",
                f"    const {_C_TYPES[buf.dtype]} *ix = (const {_C_TYPES[buf.dtype]} *)"
                f"(edgec_arena + {mem.offsets[plan.inputs[chk.input]]});",
                f"    for (size_t k = 0; k < {n}u; ++k)",
                f"      if ({_out_of_range('ix[k]', buf.dtype, chk.bound)})",
                f"        return edgec_index_error(EDGEC_MODEL_INPUT{chk.input}_NAME, k, "
                f"(int64_t)ix[k], {chk.bound});",
                "  }"]
    out.append("  if (edgec_run_plan() != 0) return -1;")
    for i, b in enumerate(plan.outputs):
        out.append(f"  memcpy(outputs[{i}], edgec_tensors[{index[b]}].data, "
                   f"{plan.buffers[b].nbytes});")
    out.append("  return 0;")
    out.append("}")
    out.append("")
    out.append("int edgec_model_run(const void *input, void *output) {")
    ins, off = [], 0
    for b in plan.inputs:
        ins.append(f"(const uint8_t *)input + {off}")
        off += plan.buffers[b].nbytes
    outs, off = [], 0
    for b in plan.outputs:
        outs.append(f"(uint8_t *)output + {off}")
        off += plan.buffers[b].nbytes
    out.append(f"  const void *const in[] = {{{', '.join(ins) or 'NULL'}}};")
    out.append(f"  void *const out[] = {{{', '.join(outs) or 'NULL'}}};")
    out.append("  return edgec_model_run_multi(in, out);")
    out.append("}")
    out.append("")
    return "\n".join(out)


MAIN_C = """\
/* main.c: generated by edgec. Command-line driver around model.h.
 *   model IN0.bin [IN1.bin ...] OUT0.bin [OUT1.bin ...]   raw tensors in, raw tensors out
 *   model --bench N                                       N timed runs; last line: median ms
 *   model --info                                          inputs, outputs, memory
 * Built with -DEDGEC_PROFILE (edgec run OUT --profile) it also takes
 *   model --profile N [IN0.bin ...]     per kernel call, the median seconds of N timed runs
 *   model --profile-marks [IN0.bin ...] marker system calls around each call (counting plugin)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "model.h"

static const size_t in_bytes[] = {@IN_BYTES@};
static const size_t out_bytes[] = {@OUT_BYTES@};

static int read_file(const char *path, void *buf, size_t n) {
  FILE *f = fopen(path, "rb");
  if (!f) { fprintf(stderr, "model: cannot open %s\\n", path); return -1; }
  size_t got = fread(buf, 1, n, f);
  int extra = fgetc(f) != EOF;
  fclose(f);
  if (got != n || extra) {
    fprintf(stderr, "model: %s must hold exactly %zu bytes\\n", path, n);
    return -1;
  }
  return 0;
}

static int write_file(const char *path, const void *buf, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0) {
    fprintf(stderr, "model: cannot write %s\\n", path);
    return -1;
  }
  return 0;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

#ifdef EDGEC_PROFILE
extern int edgec_profile_mode;
extern const int edgec_profile_num_calls;
extern double edgec_profile_seconds[];
const char *edgec_profile_kernel(int i);
void edgec_profile_mark(long what);
void edgec_profile_empty(void);

static int profile_run(const void *input, void *output) {
  if (edgec_model_run(input, output) == 0) return 0;
  fprintf(stderr, "model: %s\\n", edgec_model_last_error());
  return -1;
}

/* Prints "call I KERNEL" for each kernel call; then for --profile "time I SECONDS" (the
 * median of the N runs) and "total_seconds S" (the median of N whole runs, hooks off); for
 * --profile-marks nothing more: the counting plugin reports the windows, in order:
 * 3 empty ones from here, 3 empty ones on a call's path, the whole run, then one per call. */
static int profile_main(int argc, char **argv, unsigned char *input, unsigned char *output) {
  const int marks = strcmp(argv[1], "--profile-marks") == 0, first = marks ? 2 : 3;
  const int n_in = EDGEC_MODEL_NUM_INPUTS, calls = edgec_profile_num_calls;
  int n = marks ? 1 : (argc > 2 ? atoi(argv[2]) : 0);
  if ((!marks && strcmp(argv[1], "--profile") != 0) || n < 1
      || (argc - first != 0 && argc - first != n_in)) {
    fprintf(stderr, "usage: %s --profile N [IN0.bin ...] | --profile-marks [IN0.bin ...]\\n",
            argv[0]);
    return 2;
  }
  size_t off = 0;
  for (int i = 0; argc > first && i < n_in; ++i) {
    if (read_file(argv[first + i], input + off, in_bytes[i]) != 0) return 2;
    off += in_bytes[i];
  }
  if (argc == first)
    for (size_t i = 0; i < EDGEC_MODEL_INPUT_BYTES; ++i) input[i] = (unsigned char)(i * 2654435761u >> 24);
  for (int c = 0; c < calls; ++c) printf("call %d %s\\n", c, edgec_profile_kernel(c));
  if (marks) {
    for (int k = 0; k < 3; ++k) { edgec_profile_mark(1); edgec_profile_mark(2); }
    edgec_profile_mode = 2;
    for (int k = 0; k < 3; ++k) edgec_profile_empty();
    edgec_profile_mode = 0;
    edgec_profile_mark(1);
    if (profile_run(input, output) != 0) return 1;
    edgec_profile_mark(2);
    edgec_profile_mode = 2;
    if (profile_run(input, output) != 0) return 1;
    return 0;
  }
  double *t = malloc(sizeof(double) * (size_t)n * (size_t)(calls + 1));
  if (!t) return 2;
  if (profile_run(input, output) != 0) return 1;  /* warm-up */
  for (int i = 0; i < n; ++i) {  /* whole runs first, with the hooks off */
    double t0 = now_ms();
    if (profile_run(input, output) != 0) return 1;
    t[(size_t)calls * n + i] = (now_ms() - t0) / 1e3;
  }
  edgec_profile_mode = 1;
  for (int i = 0; i < n; ++i) {
    if (profile_run(input, output) != 0) return 1;
    for (int c = 0; c < calls; ++c) t[(size_t)c * n + i] = edgec_profile_seconds[c];
  }
  for (int c = 0; c <= calls; ++c) {
    double *s = t + (size_t)c * n;
    qsort(s, (size_t)n, sizeof(double), cmp_double);
    double median = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    if (c < calls) printf("time %d %.9e\\n", c, median);
    else printf("total_seconds %.9e\\nruns %d\\n", median, n);
  }
  free(t);
  return 0;
}
#endif

int main(int argc, char **argv) {
  static unsigned char input[EDGEC_MODEL_INPUT_BYTES + 1];
  static unsigned char output[EDGEC_MODEL_OUTPUT_BYTES + 1];
  const int n_in = EDGEC_MODEL_NUM_INPUTS, n_out = EDGEC_MODEL_NUM_OUTPUTS;
#ifdef EDGEC_PROFILE
  if (argc >= 2 && strncmp(argv[1], "--profile", 9) == 0)
    return profile_main(argc, argv, input, output);
#endif
  if (argc == 2 && strcmp(argv[1], "--info") == 0) {
    printf("inputs %d (%u bytes), outputs %d (%u bytes)\\n", n_in,
           (unsigned)EDGEC_MODEL_INPUT_BYTES, n_out, (unsigned)EDGEC_MODEL_OUTPUT_BYTES);
    printf("arena %zu bytes, workspace %zu bytes, weights %zu bytes\\n", edgec_model_arena_bytes,
           edgec_model_workspace_bytes, edgec_model_weight_bytes);
    return 0;
  }
  if (argc == 3 && strcmp(argv[1], "--bench") == 0) {
    int n = atoi(argv[2]);
    if (n < 1) { fprintf(stderr, "model: --bench needs a positive count\\n"); return 2; }
    double *t = malloc(sizeof(double) * (size_t)n);
    if (!t) return 2;
    for (size_t i = 0; i < sizeof(input); ++i) input[i] = (unsigned char)(i * 2654435761u >> 24);
    if (edgec_model_run(input, output) != 0) {  /* warm-up */
      fprintf(stderr, "model: %s\\n", edgec_model_last_error());
      return 1;
    }
    for (int i = 0; i < n; ++i) {
      double t0 = now_ms();
      if (edgec_model_run(input, output) != 0) {
        fprintf(stderr, "model: %s\\n", edgec_model_last_error());
        return 1;
      }
      t[i] = now_ms() - t0;
    }
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    double median = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
    printf("runs %d, min %.4f ms, max %.4f ms\\n", n, t[0], t[n - 1]);
    printf("median_ms %.4f\\n", median);
    free(t);
    return 0;
  }
  if (argc != 1 + n_in + n_out) {
    fprintf(stderr, "usage: %s IN0.bin ... OUT0.bin ... (%d input and %d output files)\\n"
                    "       %s --bench N | --info\\n", argv[0], n_in, n_out, argv[0]);
    return 2;
  }
  size_t off = 0;
  for (int i = 0; i < n_in; ++i) {
    if (read_file(argv[1 + i], input + off, in_bytes[i]) != 0) return 2;
    off += in_bytes[i];
  }
  int rc = edgec_model_run(input, output);
  if (rc == EDGEC_MODEL_BAD_INPUT) {
    fprintf(stderr, "model: bad input: %s\\n", edgec_model_last_error());
    return 2;
  }
  if (rc != 0) {
    fprintf(stderr, "model: inference failed: %s\\n", edgec_model_last_error());
    return 1;
  }
  off = 0;
  for (int i = 0; i < n_out; ++i) {
    if (write_file(argv[1 + n_in + i], output + off, out_bytes[i]) != 0) return 2;
    off += out_bytes[i];
  }
  return 0;
}
"""


def main_c(plan: KernelPlan) -> str:
    ins = ", ".join(str(plan.buffers[b].nbytes) for b in plan.inputs) or "0"
    outs = ", ".join(str(plan.buffers[b].nbytes) for b in plan.outputs) or "0"
    return MAIN_C.replace("@IN_BYTES@", ins).replace("@OUT_BYTES@", outs)
