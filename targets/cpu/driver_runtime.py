"""The C runtime pieces model.c embeds in place of a TVM runtime.

SERIAL_RUNTIME: the kernels' workspace allocator (a stack allocator over a static buffer,
reset before every kernel call) and the error buffer. THREADED_RUNTIME (``--threads`` > 1):
per-thread workspace stacks and ``__TVMBackendParallelLaunch`` over a static pthread pool.
Both expect EDGEC_ALIGN and edgec_workspace defined before them; the threaded one also
EDGEC_THREADS and EDGEC_WS_SLOT (see driver.model_c). ARM_EABI_CONVERSIONS: the 64-bit
integer <-> float helpers for 32-bit hard-float ARM builds linked against GNU libgcc.
"""

# LLVM (which compiles the kernels) calls the 64-bit integer <-> float helpers of 32-bit ARM
# by their generic names (__fixsfdi, __floatundisf, ...) with the hard-float convention:
# the float in s0/d0. GNU libgcc defines those names as aliases of the __aeabi_* helpers,
# which take and return floats in core registers (the base AAPCS, always). Linked against
# libgcc, a kernel read its conversions' results from the wrong registers: bilinear Resize,
# whose source index is Cast(int64, floor(x)) and whose weight is Cast(float32, int64 i),
# gave 4081 of 4096 outputs wrong on armv7-a7. So model.c defines both names of each helper
# (the generic one hard-float, the __aeabi_ one base PCS) with no libcall inside, and
# libgcc's members are never linked. clang-built drivers (zig cc) get compiler-rt, whose
# generic names are hard-float like LLVM's calls, and need none of this.
ARM_EABI_CONVERSIONS = """\
/* Only with a double-precision FPU (__ARM_FP bit 3): on a single-precision one (Cortex-M4F)
 * the doubles below are libgcc calls whose object defines these names too. */
#if defined(__arm__) && defined(__ARM_PCS_VFP) && !defined(__clang__) && \
    defined(__ARM_FP) && (__ARM_FP & 8)
#define EDGEC_SOFT_PCS __attribute__((pcs("aapcs")))
static uint64_t edgec_d2ul(double a) {  /* truncates; saturates; NaN and negatives give 0 */
  if (!(a > 0.0)) return 0;
  if (a >= 18446744073709551616.0) return UINT64_MAX;
  uint32_t hi = (uint32_t)(a * (1.0 / 4294967296.0));
  double lo = a - (double)hi * 4294967296.0;  /* exact: both are multiples of a's ulp */
  return (uint64_t)hi << 32 | (uint32_t)lo;
}
static int64_t edgec_d2l(double a) {
  if (a != a) return 0;
  if (a >= 9223372036854775808.0) return INT64_MAX;
  if (a <= -9223372036854775808.0) return INT64_MIN;
  return a < 0 ? -(int64_t)edgec_d2ul(-a) : (int64_t)edgec_d2ul(a);
}
/* Rounded once: the product is exact and the sum is rounded to nearest by the FPU. */
static double edgec_ul2d(uint64_t v) {
  return (double)(uint32_t)(v >> 32) * 4294967296.0 + (double)(uint32_t)v;
}
static double edgec_l2d(int64_t v) {
  return (double)(int32_t)(v >> 32) * 4294967296.0 + (double)(uint32_t)v;
}
static float edgec_ul2f(uint64_t v) {
  /* Below 2^53 the double is exact; above, the 11 bits the double drops fold into a sticky
   * bit, so rounding to float happens once, as a direct conversion would. */
  if (v >> 53) return (float)(edgec_ul2d(v >> 11 | ((v & 0x7FF) != 0)) * 2048.0);
  return (float)edgec_ul2d(v);
}
static float edgec_l2f(int64_t v) {
  return v < 0 ? -edgec_ul2f(-(uint64_t)v) : edgec_ul2f((uint64_t)v);
}
int64_t __fixsfdi(float a) { return edgec_d2l(a); }
uint64_t __fixunssfdi(float a) { return edgec_d2ul(a); }
int64_t __fixdfdi(double a) { return edgec_d2l(a); }
uint64_t __fixunsdfdi(double a) { return edgec_d2ul(a); }
float __floatdisf(int64_t v) { return edgec_l2f(v); }
float __floatundisf(uint64_t v) { return edgec_ul2f(v); }
double __floatdidf(int64_t v) { return edgec_l2d(v); }
double __floatundidf(uint64_t v) { return edgec_ul2d(v); }
EDGEC_SOFT_PCS int64_t __aeabi_f2lz(float a) { return edgec_d2l(a); }
EDGEC_SOFT_PCS uint64_t __aeabi_f2ulz(float a) { return edgec_d2ul(a); }
EDGEC_SOFT_PCS int64_t __aeabi_d2lz(double a) { return edgec_d2l(a); }
EDGEC_SOFT_PCS uint64_t __aeabi_d2ulz(double a) { return edgec_d2ul(a); }
EDGEC_SOFT_PCS float __aeabi_l2f(int64_t v) { return edgec_l2f(v); }
EDGEC_SOFT_PCS float __aeabi_ul2f(uint64_t v) { return edgec_ul2f(v); }
EDGEC_SOFT_PCS double __aeabi_l2d(int64_t v) { return edgec_l2d(v); }
EDGEC_SOFT_PCS double __aeabi_ul2d(uint64_t v) { return edgec_ul2d(v); }
#endif
"""

SERIAL_RUNTIME = """\
/* Kernel scratch memory: TVM kernels ask the runtime for workspace; here a stack allocator
 * over a static buffer serves them, reset before every kernel call. TVM frees each buffer at
 * the end of its scope (nested, last in first out), so freeing the latest allocation gives its
 * space back: a buffer allocated inside a loop takes its size once, not once per iteration.
 * Any other free is ignored (that space stays taken until the next kernel call). */
#define EDGEC_WS_DEPTH 32
static size_t edgec_ws_top;
static char edgec_error[256];
static int edgec_ws_depth;
static void *edgec_ws_ptr[EDGEC_WS_DEPTH];
static size_t edgec_ws_mark[EDGEC_WS_DEPTH];  /* edgec_ws_top before that allocation */

static void *edgec_ws_alloc(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  (void)device_type; (void)device_id; (void)code; (void)bits;
  if (edgec_ws_top == 0) edgec_ws_depth = 0;  /* a new kernel call (or all freed) */
  size_t start = (edgec_ws_top + EDGEC_ALIGN - 1) & ~(size_t)(EDGEC_ALIGN - 1);
  if (start + nbytes > sizeof(edgec_workspace)) {
    strncpy(edgec_error, "kernel workspace exhausted", sizeof(edgec_error) - 1);
    return NULL;
  }
  if (edgec_ws_depth < EDGEC_WS_DEPTH) {
    edgec_ws_ptr[edgec_ws_depth] = edgec_workspace + start;
    edgec_ws_mark[edgec_ws_depth++] = edgec_ws_top;
  }
  edgec_ws_top = start + (size_t)nbytes;
  return edgec_workspace + start;
}

static int edgec_ws_free(int device_type, int device_id, void *ptr) {
  (void)device_type; (void)device_id;
  if (edgec_ws_depth > 0 && edgec_ws_ptr[edgec_ws_depth - 1] == ptr)
    edgec_ws_top = edgec_ws_mark[--edgec_ws_depth];
  return 0;
}

void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = edgec_ws_alloc;
int (*__TVMBackendFreeWorkspace)(int, int, void *) = edgec_ws_free;

/* A kernel that TVM itself made parallel (e.g. its scatter, written with a parallel loop)
 * still calls the launch hook in a one-thread build: run it as one task, here. */
typedef struct { void *sync_handle; int32_t num_task; } edgec_parallel_env;
typedef int (*edgec_parallel_lambda)(int, edgec_parallel_env *, void *);
static int edgec_serial_launch(edgec_parallel_lambda fn, void *closure, int num_task) {
  (void)num_task;
  edgec_parallel_env env = {NULL, 1};
  return fn(0, &env, closure);
}
int (*__TVMBackendParallelLaunch)(edgec_parallel_lambda, void *, int) = edgec_serial_launch;
"""

# Threaded builds. TVM's codegen lowers a parallel loop to
#   __TVMBackendParallelLaunch(lambda, closure, 0)
# and each lambda(task_id, env, closure) runs a contiguous share of the iterations given
# env->num_task; scratch buffers of the loop body are allocated (and freed, LIFO) inside the
# lambda, once per iteration. So each thread gets its own workspace stack, and free rewinds.
THREADED_RUNTIME = """\
#include <pthread.h>

static char edgec_error[256];
static __thread int edgec_tid;  /* 0: the caller's thread; 1..: pool workers */
static size_t edgec_ws_top[EDGEC_THREADS];

static void *edgec_ws_alloc(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  (void)device_type; (void)device_id; (void)code; (void)bits;
  size_t *top = &edgec_ws_top[edgec_tid];
  size_t start = (*top + EDGEC_ALIGN - 1) & ~(size_t)(EDGEC_ALIGN - 1);
  if (start + nbytes > EDGEC_WS_SLOT) {
    strncpy(edgec_error, "kernel workspace exhausted", sizeof(edgec_error) - 1);
    return NULL;
  }
  *top = start + (size_t)nbytes;
  return edgec_workspace + (size_t)edgec_tid * EDGEC_WS_SLOT + start;
}

static int edgec_ws_free(int device_type, int device_id, void *ptr) {
  (void)device_type; (void)device_id;
  uint8_t *base = edgec_workspace + (size_t)edgec_tid * EDGEC_WS_SLOT;
  if ((uint8_t *)ptr >= base && (uint8_t *)ptr < base + EDGEC_WS_SLOT)
    edgec_ws_top[edgec_tid] = (size_t)((uint8_t *)ptr - base);  /* frees come in LIFO order */
  return 0;
}

static void edgec_ws_reset(void) { memset(edgec_ws_top, 0, sizeof(edgec_ws_top)); }

void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = edgec_ws_alloc;
int (*__TVMBackendFreeWorkspace)(int, int, void *) = edgec_ws_free;

/* TVMParallelGroupEnv and FTVMParallelLambda (tvm/runtime/c_backend_api.h). */
typedef struct { void *sync_handle; int32_t num_task; } edgec_parallel_env;
typedef int (*edgec_parallel_lambda)(int, edgec_parallel_env *, void *);

/* The pool. A launch publishes one 64-bit ticket: generation (24 bits), task count (20) and
 * the next unclaimed task (20). Every thread, the caller included, claims tasks with a
 * compare-and-swap until none is left, so a worker the OS has not scheduled yet delays
 * nothing: the caller runs its share too. Workers spin a little, then sleep on `wake` until
 * the generation changes; the caller waits for `done` to reach the task count. */
#define EDGEC_SPIN 20000
#define EDGEC_GEN(t) ((unsigned)((t) >> 40))
#define EDGEC_COUNT(t) ((int)(((t) >> 20) & 0xFFFFF))
#define EDGEC_NEXT(t) ((int)((t) & 0xFFFFF))
static struct {
  pthread_mutex_t lock;
  pthread_cond_t wake, finished;
  uint64_t ticket;
  int done;     /* tasks finished in the current launch */
  int size;     /* threads that take tasks, the caller's included */
  int failed;
  int busy;     /* a launch is running: a nested one runs serially on its caller */
  edgec_parallel_lambda fn;
  void *closure;
} edgec_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
                0, 0, 1, 0, 0, NULL, NULL};
static pthread_once_t edgec_pool_once = PTHREAD_ONCE_INIT;

static void edgec_claim_tasks(void) {
  uint64_t t = __atomic_load_n(&edgec_pool.ticket, __ATOMIC_ACQUIRE);
  while (EDGEC_NEXT(t) < EDGEC_COUNT(t)) {
    /* Read before claiming: a successful claim proves the ticket, hence fn, did not change. */
    edgec_parallel_lambda fn = __atomic_load_n(&edgec_pool.fn, __ATOMIC_RELAXED);
    void *closure = __atomic_load_n(&edgec_pool.closure, __ATOMIC_RELAXED);
    if (!__atomic_compare_exchange_n(&edgec_pool.ticket, &t, t + 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
      continue;  /* t now holds the current ticket */
    edgec_parallel_env env = {NULL, EDGEC_COUNT(t)};
    if (fn(EDGEC_NEXT(t), &env, closure) != 0)
      __atomic_store_n(&edgec_pool.failed, 1, __ATOMIC_RELAXED);
    if (__atomic_add_fetch(&edgec_pool.done, 1, __ATOMIC_ACQ_REL) == EDGEC_COUNT(t) && edgec_tid) {
      pthread_mutex_lock(&edgec_pool.lock);
      pthread_cond_signal(&edgec_pool.finished);
      pthread_mutex_unlock(&edgec_pool.lock);
    }
    t = __atomic_load_n(&edgec_pool.ticket, __ATOMIC_ACQUIRE);
  }
}

static void *edgec_worker(void *arg) {
  unsigned seen = 0;
  edgec_tid = (int)(intptr_t)arg;
  for (;;) {
    unsigned gen = seen;
    for (int i = 0; i < EDGEC_SPIN && gen == seen; ++i)
      gen = EDGEC_GEN(__atomic_load_n(&edgec_pool.ticket, __ATOMIC_ACQUIRE));
    if (gen == seen) {
      pthread_mutex_lock(&edgec_pool.lock);
      while ((gen = EDGEC_GEN(__atomic_load_n(&edgec_pool.ticket, __ATOMIC_ACQUIRE))) == seen)
        pthread_cond_wait(&edgec_pool.wake, &edgec_pool.lock);
      pthread_mutex_unlock(&edgec_pool.lock);
    }
    seen = gen;
    edgec_claim_tasks();
  }
  return NULL;
}

static void edgec_pool_start(void) {
  static pthread_t workers[EDGEC_THREADS - 1];
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  for (int i = 1; i < EDGEC_THREADS; ++i) {  /* fewer threads if one fails: same results */
    if (pthread_create(&workers[i - 1], &attr, edgec_worker, (void *)(intptr_t)i) != 0) break;
    edgec_pool.size = i + 1;
  }
  pthread_attr_destroy(&attr);
}

static int edgec_parallel_launch(edgec_parallel_lambda fn, void *closure, int num_task) {
  pthread_once(&edgec_pool_once, edgec_pool_start);
  if (num_task <= 0) num_task = edgec_pool.size;
  if (edgec_tid != 0 || edgec_pool.size == 1 || edgec_pool.busy || num_task > 0xFFFFF) {
    edgec_parallel_env env = {NULL, num_task};  /* nested, or no workers: run them here */
    for (int t = 0; t < num_task; ++t)
      if (fn(t, &env, closure) != 0) return -1;
    return 0;
  }
  /* The previous launch is complete: a thread that still reads fn holds a stale ticket, and
   * its claim will fail. */
  edgec_pool.busy = 1;
  __atomic_store_n(&edgec_pool.fn, fn, __ATOMIC_RELAXED);
  __atomic_store_n(&edgec_pool.closure, closure, __ATOMIC_RELAXED);
  edgec_pool.failed = 0;
  __atomic_store_n(&edgec_pool.done, 0, __ATOMIC_RELAXED);
  uint64_t gen = (EDGEC_GEN(edgec_pool.ticket) + 1) & 0xFFFFFF;
  pthread_mutex_lock(&edgec_pool.lock);
  __atomic_store_n(&edgec_pool.ticket, gen << 40 | (uint64_t)num_task << 20, __ATOMIC_RELEASE);
  pthread_cond_broadcast(&edgec_pool.wake);
  pthread_mutex_unlock(&edgec_pool.lock);
  edgec_claim_tasks();
  for (int i = 0; i < EDGEC_SPIN && __atomic_load_n(&edgec_pool.done, __ATOMIC_ACQUIRE) < num_task; ++i) {
  }
  if (__atomic_load_n(&edgec_pool.done, __ATOMIC_ACQUIRE) < num_task) {
    pthread_mutex_lock(&edgec_pool.lock);
    while (__atomic_load_n(&edgec_pool.done, __ATOMIC_ACQUIRE) < num_task)
      pthread_cond_wait(&edgec_pool.finished, &edgec_pool.lock);
    pthread_mutex_unlock(&edgec_pool.lock);
  }
  edgec_pool.busy = 0;
  return __atomic_load_n(&edgec_pool.failed, __ATOMIC_RELAXED) ? -1 : 0;
}

/* No TVMBackendParallelBarrier: tasks are claimed, not pinned to threads, so a barrier could
 * wait for a task that runs later on the same thread; edgec's schedules never emit one. */
int (*__TVMBackendParallelLaunch)(edgec_parallel_lambda, void *, int) = edgec_parallel_launch;
"""
