/* count.c: a QEMU TCG plugin that counts executed guest instructions (qemu-user 7.2).
 *
 * Debian's qemu-user ships no qemu-plugin.h, so the few parts of the QEMU 7.2 plugin API
 * (QEMU_PLUGIN_VERSION 1) used here are declared by hand below.
 *
 * Every translation block adds its instruction count to a counter when it starts executing
 * (inline add: no helper call). A block is counted whole; in user mode a block only stops
 * early on a synchronous guest fault, and none is expected in the programs measured here.
 *
 * Arguments (qemu-aarch64 -plugin ./libcount.so,ARG=VAL,...):
 *   out=FILE       write the report to FILE (default: the host stderr of qemu)
 *   atomic=on      add with an atomic helper call per block instead of the inline add
 *                  (exact when the guest runs several threads at once; slower)
 *   enter=ADDR     (hex) also count, separately, the instructions executed inside each call
 *                  of the function at ADDR: a window opens when a block starts at ADDR ...
 *   back=LO-HI     (hex) ... and closes at the first block after that which starts inside
 *                  [LO,HI), the caller's code (the block at the return address). Up to 4 back=.
 *   marker=NUM     (hex) count, separately, the instructions between marker system calls: the
 *                  guest calls syscall(NUM, 1) to open a window and syscall(NUM, 2) to close it
 *                  (NUM is a number no kernel uses, so the call only returns ENOSYS). The
 *                  window holds the instructions after the opening call's block, up to and
 *                  including the closing call's block: a constant the guest can measure with
 *                  an empty window and subtract.
 *   match=MASK/VAL (hex) also count the executed instructions whose 32-bit encoding e has
 *                  (e & MASK) == VAL (an instruction mix: sdot, fmla, ...). Up to 16 match=;
 *                  4-byte instructions only (A64; A32; not Thumb-16). Slower: a counter per
 *                  matching instruction.
 * Windows are bookkept without locks: use them in single-threaded guests.
 * Report lines:  "insns N"  "threads T"  and with enter= or marker=: "calls K" and
 * "call I insns C" for each window; with match=: "match MASK/VAL N" (whole run) and
 * "callmatch I MASK/VAL N" (in each window).
 */
#include <stdint.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- QEMU 7.2 plugin API, declared by hand (include/qemu/qemu-plugin.h) ---- */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
  const char *target_name;
  struct { int min; int cur; } version;
  bool system_emulation;
  union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                                              uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op,
                                                void *ptr, uint64_t imm);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;
/* ---------------------------------------------------------------------------- */

static uint64_t total;                 /* instructions executed, all threads */
static unsigned threads;               /* vcpus (guest threads) seen */
static bool atomic_mode;
static const char *out_path;
static uint64_t enter_addr;
static int64_t marker = -1;
static int n_back;
static uint64_t back_lo[4], back_hi[4];
static bool in_call;
static uint64_t call_start;
static uint64_t *calls;
static size_t n_calls, cap_calls;
#define MAX_MATCH 16
static int n_match;
static uint32_t match_mask[MAX_MATCH], match_val[MAX_MATCH];
static uint64_t match_count[MAX_MATCH], match_start[MAX_MATCH];
static uint64_t *call_match;  /* n_match counters per window */

static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu) {
  (void)id; (void)vcpu;
  __atomic_fetch_add(&threads, 1, __ATOMIC_RELAXED);
}

static void exec_atomic(unsigned int vcpu, void *n) {
  (void)vcpu;
  __atomic_fetch_add(&total, (uint64_t)(uintptr_t)n, __ATOMIC_RELAXED);
}

static void open_window(void) {
  in_call = true;
  call_start = total;
  for (int i = 0; i < n_match; ++i) match_start[i] = match_count[i];
}

static void close_window(void) {
  in_call = false;
  if (n_calls == cap_calls) {
    cap_calls = cap_calls ? 2 * cap_calls : 64;
    calls = realloc(calls, cap_calls * sizeof *calls);
    if (n_match) call_match = realloc(call_match, cap_calls * n_match * sizeof *call_match);
  }
  for (int i = 0; i < n_match; ++i) call_match[n_calls * n_match + i] = match_count[i] - match_start[i];
  calls[n_calls++] = total - call_start;
}

/* blocks at the window's edges: the window is settled before the block's own instructions
 * are added, so the entry block counts inside the call and the return block outside it */
static void exec_enter(unsigned int vcpu, void *n) {
  (void)vcpu;
  if (!in_call) open_window();
  total += (uint64_t)(uintptr_t)n;
}

static void exec_back(unsigned int vcpu, void *n) {
  (void)vcpu;
  if (in_call) close_window();
  total += (uint64_t)(uintptr_t)n;
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
  (void)id; (void)vcpu; (void)a2; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
  if (num != marker) return;
  if (a1 == 1 && !in_call) open_window();
  else if (a1 == 2 && in_call) close_window();
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  uint64_t n = qemu_plugin_tb_n_insns(tb), pc = qemu_plugin_tb_vaddr(tb);
  for (size_t k = 0; n_match && k < n; ++k) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, k);
    if (qemu_plugin_insn_size(insn) != 4) continue;
    uint32_t e;
    memcpy(&e, qemu_plugin_insn_data(insn), 4);  /* little-endian guest on a little-endian host */
    for (int i = 0; i < n_match; ++i)
      if ((e & match_mask[i]) == match_val[i])
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &match_count[i], 1);
  }
  if (enter_addr) {
    if (pc == enter_addr) {
      qemu_plugin_register_vcpu_tb_exec_cb(tb, exec_enter, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)n);
      return;
    }
    for (int i = 0; i < n_back; ++i)
      if (pc >= back_lo[i] && pc < back_hi[i]) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, exec_back, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)n);
        return;
      }
  }
  if (atomic_mode)
    qemu_plugin_register_vcpu_tb_exec_cb(tb, exec_atomic, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)n);
  else
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &total, n);
}

static void at_exit(qemu_plugin_id_t id, void *p) {
  (void)id; (void)p;
  size_t cap = 256 + 64 * n_match + (48 + 64 * n_match) * n_calls, len = 0;
  char *s = malloc(cap);
  len += snprintf(s + len, cap - len, "insns %llu\nthreads %u\n", (unsigned long long)total, threads);
  if (enter_addr || marker >= 0) {
    len += snprintf(s + len, cap - len, "calls %zu\n", n_calls);
    for (size_t i = 0; i < n_calls; ++i) {
      len += snprintf(s + len, cap - len, "call %zu insns %llu\n", i, (unsigned long long)calls[i]);
      for (int j = 0; j < n_match; ++j)
        len += snprintf(s + len, cap - len, "callmatch %zu %x/%x %llu\n", i, match_mask[j], match_val[j],
                        (unsigned long long)call_match[i * n_match + j]);
    }
  }
  for (int j = 0; j < n_match; ++j)
    len += snprintf(s + len, cap - len, "match %x/%x %llu\n", match_mask[j], match_val[j],
                    (unsigned long long)match_count[j]);
  if (out_path) {
    FILE *f = fopen(out_path, "w");
    if (f) { fputs(s, f); fclose(f); } else fprintf(stderr, "count: cannot write %s\n", out_path);
  } else {
    fputs(s, stderr);  /* qemu_plugin_outs would need -d plugin */
  }
  free(s);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    const char *a = argv[i];
    if (strncmp(a, "out=", 4) == 0) out_path = strdup(a + 4);
    else if (strcmp(a, "atomic=on") == 0) atomic_mode = true;
    else if (strcmp(a, "atomic=off") == 0) atomic_mode = false;
    else if (strncmp(a, "match=", 6) == 0) {
      char *end;
      if (n_match == MAX_MATCH) { fprintf(stderr, "count: more than %d match=\n", MAX_MATCH); return -1; }
      match_mask[n_match] = (uint32_t)strtoul(a + 6, &end, 16);
      if (*end != '/') { fprintf(stderr, "count: match=MASK/VAL\n"); return -1; }
      match_val[n_match++] = (uint32_t)strtoul(end + 1, NULL, 16);
    }
    else if (strncmp(a, "marker=", 7) == 0) marker = (int64_t)strtoull(a + 7, NULL, 16);
    else if (strncmp(a, "enter=", 6) == 0) enter_addr = strtoull(a + 6, NULL, 16);
    else if (strncmp(a, "back=", 5) == 0 && n_back < 4) {
      char *end;
      back_lo[n_back] = strtoull(a + 5, &end, 16);
      if (*end != '-') { fprintf(stderr, "count: back=LO-HI\n"); return -1; }
      back_hi[n_back++] = strtoull(end + 1, NULL, 16);
    } else {
      fprintf(stderr, "count: unknown argument %s\n", a);
      return -1;
    }
  }
  if (enter_addr && !n_back) { fprintf(stderr, "count: enter= needs back=LO-HI\n"); return -1; }
  qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
  qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
  if (marker >= 0) qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  return 0;
}
