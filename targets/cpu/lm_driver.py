"""The language-model driver: a generation API in libmodel.a and a text CLI in ``model``.

Before: the KernelPlan of a decode graph that follows the contract (``LMContract``, see
toolchain/optimizer/kvcache.py), whose KV caches the ``kv_cache`` stage made in-place
buffers (each past_i and present_i one arena buffer), its MemoryPlan, and the generic
model.c/model.h/main.c. After: model.c gains ``edgec_lm_reset/prefill/step`` that write the
tokens and the position straight into the arena, run the plan and read the logits there; the
caches stay where they are, so a token copies nothing but its logits. main.c gains
``--prompt/--tokens/--temperature/--top-k/--seed/--ids/--logits/--bench-tokens`` and keeps
the raw-tensor mode of every edgec model.

A graph of S > 1 tokens per call: each call feeds up to S new tokens; the rest of the window
is padded with token 0, whose rows land after the real ones and are masked out of attention
until real tokens overwrite them. Near the end of the context the window starts at T - S and
re-feeds already cached tokens (from a static history of the ids), which recomputes the very
same rows. So a prefill graph also decodes, at the cost of S tokens per step; export S = 1
for the fastest decoding.
"""

from __future__ import annotations

from toolchain.errors import ModelError
from toolchain.optimizer.kvcache import LMContract
from toolchain.optimizer.memplan import MemoryPlan
from toolchain.optimizer.plan import KernelPlan, TEMP
from toolchain.targets.cpu import driver
from toolchain.targets.cpu.driver import index_checks, main_c as tensor_main_c


def _buffers(plan: KernelPlan, names_in: list[str], names_out: list[str]) -> dict[str, int]:
    found = {n: b for n, b in zip(names_in, plan.inputs)}
    found.update({n: b for n, b in zip(names_out, plan.outputs)})
    return found


def token_bound(plan: KernelPlan, names_in: list[str], lm: LMContract) -> int:
    """Token ids the model can take: [0, bound). The vocabulary, or fewer if the embedding
    table the ids index has fewer rows."""
    pos = names_in.index("input_ids")
    bounds = [c.bound for c in index_checks(plan) if c.input == pos]
    return min([lm.vocab, *bounds])


def check_cache_buffers(plan: KernelPlan, mem: MemoryPlan, names_in: list[str],
                        names_out: list[str], lm: LMContract) -> None:
    """Each present_i is its past_i buffer, in the arena, and shares no byte with any other
    buffer (every buffer is alive while the cache is, since the cache lives for the whole run)."""
    bufs = _buffers(plan, names_in, names_out)
    caches = []
    for i in range(lm.layers):
        for kv in ("key", "value"):
            past, present = bufs[f"past_{kv}_{i}"], bufs.get(f"present_{kv}_{i}")
            if present != past:
                raise ModelError(f"internal: present_{kv}_{i} is not updated in place")
            caches.append(past)
    size = {b: plan.buffers[b].nbytes for b in mem.offsets}
    for c in caches:
        lo, hi = mem.offsets[c], mem.offsets[c] + size[c]
        for b, off in mem.offsets.items():
            if b != c and size[b] and off < hi and lo < off + size[b]:
                raise ModelError(f"internal: the KV cache buffer {c} shares memory with {b}")
    if plan.buffers[bufs["logits"]].kind != TEMP:
        raise ModelError("internal: logits is not computed by a kernel")


def header_lines(lm: LMContract, bound: int) -> str:
    return f"""
/* Language model (edgec's decode-graph contract): generation with a static KV cache.
 *   void edgec_lm_reset(void);   empty the cache (position 0)
 *   int edgec_lm_prefill(const int32_t *ids, int n, float *logits);
 *   int edgec_lm_step(int32_t id, float *logits);
 *     feed n tokens (step: one) at the current position; logits (may be NULL) receives the
 *     EDGEC_LM_VOCAB logits that follow the last of them. Returns 0, EDGEC_MODEL_BAD_INPUT
 *     for an id outside [0, EDGEC_LM_TOKENS), EDGEC_LM_CONTEXT_FULL when position + n would
 *     pass EDGEC_LM_CONTEXT (nothing is fed then), -1 when a kernel fails.
 *   int edgec_lm_position(void);  tokens in the cache
 * The graph takes EDGEC_LM_SEQ tokens per call; fewer are padded (see model.c). */
#define EDGEC_LM_CONTEXT_FULL (-3)
#define EDGEC_LM_VOCAB {lm.vocab}
#define EDGEC_LM_TOKENS {bound}
#define EDGEC_LM_CONTEXT {lm.context}
#define EDGEC_LM_SEQ {lm.seq}
#define EDGEC_LM_LAYERS {lm.layers}
void edgec_lm_reset(void);
int edgec_lm_prefill(const int32_t *ids, int n, float *logits);
int edgec_lm_step(int32_t id, float *logits);
int edgec_lm_position(void);
"""


def add_to_header(header: str, lm: LMContract, bound: int) -> str:
    tail = "\n#ifdef __cplusplus\n}\n#endif\n#endif /* EDGEC_MODEL_H */"
    if tail not in header:
        raise ModelError("internal: model.h has an unexpected end")
    return header.replace(tail, header_lines(lm, bound) + tail)


_LM_C = """
/* ---- language model: tokens and position written into the arena, cache kept in place ---- */
static int32_t edgec_lm_history[@T@];
static int edgec_lm_pos;

void edgec_lm_reset(void) {
@RESET@  edgec_lm_pos = 0;
}

int edgec_lm_position(void) { return edgec_lm_pos; }

int edgec_lm_refuse(int code, const char *what, int64_t a, int64_t b) {
  char *p = edgec_error, *end = edgec_error + sizeof(edgec_error) - 64;
  for (const char *c = what; *c && p < end; ++c) *p++ = *c;
  p = edgec_put_int(p, a);
  for (const char *c = code == EDGEC_LM_CONTEXT_FULL ? " tokens, the context holds "
                                                     : " is outside [0, "; *c; ++c) *p++ = *c;
  p = edgec_put_int(p, b);
  if (code != EDGEC_LM_CONTEXT_FULL) *p++ = ')';
  *p = 0;
  return code;
}

/* n <= S new tokens, checked. The window starts at the position, or at T - S near the end. */
static int edgec_lm_feed(const int32_t *ids, int n, float *logits) {
  int start = edgec_lm_pos, stop = edgec_lm_pos + n;
  int64_t *in_ids = (int64_t *)(edgec_arena + @IDS@);
  if (start + @S@ > @T@) start = @T@ - @S@;
  for (int k = 0; k < n; ++k) edgec_lm_history[edgec_lm_pos + k] = ids[k];
  for (int j = 0; j < @S@; ++j) in_ids[j] = start + j < stop ? edgec_lm_history[start + j] : 0;
  *(int64_t *)(edgec_arena + @POS@) = start;
  if (edgec_run_plan() != 0) return -1;
  if (logits) memcpy(logits, edgec_arena + @LOGITS@ + (size_t)(stop - 1 - start) * @V@u * 4u,
                     @V@u * 4u);
  edgec_lm_pos = stop;
  return 0;
}

int edgec_lm_prefill(const int32_t *ids, int n, float *logits) {
  edgec_error[0] = 0;
  if (n < 1) {
    strncpy(edgec_error, "no tokens to feed", sizeof(edgec_error) - 1);
    return EDGEC_MODEL_BAD_INPUT;
  }
  for (int k = 0; k < n; ++k)
    if (ids[k] < 0 || ids[k] >= EDGEC_LM_TOKENS)
      return edgec_lm_refuse(EDGEC_MODEL_BAD_INPUT, "token id ", ids[k], EDGEC_LM_TOKENS);
  if (n > @T@ - edgec_lm_pos)
    return edgec_lm_refuse(EDGEC_LM_CONTEXT_FULL, "context full: position + ",
                           (int64_t)edgec_lm_pos + n, @T@);
  for (int k = 0; k < n; k += @S@) {
    int m = n - k < @S@ ? n - k : @S@;
    if (edgec_lm_feed(ids + k, m, k + m == n ? logits : NULL) != 0) return -1;
  }
  return 0;
}

int edgec_lm_step(int32_t id, float *logits) { return edgec_lm_prefill(&id, 1, logits); }
"""



def position_check(plan: KernelPlan, mem: MemoryPlan, names_in: list[str],
                   lm: LMContract) -> str:
    """C for model_run (the raw-tensor entry): the position input must lie in [0, T - S],
    or the position embedding's Gather would read outside its table."""
    off = mem.offsets[plan.inputs[names_in.index("position")]]
    last = lm.context - lm.seq
    return (f"  {{  /* position: 0 .. T - S = {last} */\n"
            f"    int edgec_lm_refuse(int, const char *, int64_t, int64_t);\n"
            f"    int64_t p = *(const int64_t *)(edgec_arena + {off});\n"
            f"    if (p < 0 || p > {last})\n"
            f"      return edgec_lm_refuse(EDGEC_MODEL_BAD_INPUT, \"input 'position' \", p, "
            f"{last + 1});\n  }}")


def model_c_lm(plan: KernelPlan, mem: MemoryPlan, names_in: list[str], names_out: list[str],
               lm: LMContract) -> str:
    """The C appended to model.c (it uses edgec_arena, edgec_error and edgec_run_plan)."""
    bufs = _buffers(plan, names_in, names_out)
    reset = "".join(
        f"  memset(edgec_arena + {mem.offsets[bufs[f'past_{kv}_{i}']]}, 0, "
        f"{plan.buffers[bufs[f'past_{kv}_{i}']].nbytes}u);\n"
        for i in range(lm.layers) for kv in ("key", "value"))
    subs = {"@T@": str(lm.context), "@S@": str(lm.seq), "@V@": str(lm.vocab),
            "@IDS@": str(mem.offsets[bufs["input_ids"]]),
            "@POS@": str(mem.offsets[bufs["position"]]),
            "@LOGITS@": str(mem.offsets[bufs["logits"]]), "@RESET@": reset}
    text = _LM_C
    for k, v in subs.items():
        text = text.replace(k, v)
    # model.c defines edgec_put_int already when it checks indices
    return ("" if index_checks(plan) else "\n" + driver.PUT_INT_C) + text


MAIN_LM_C = """
/* ---- language model CLI ----
 *   model --prompt TEXT [--tokens N] [--temperature T] [--top-k K] [--seed S] [--ids]
 *         [--logits FILE]        generate; last line: prefill and decode tokens/s
 *   model --bench-tokens N       time N decode steps; last line: decode_tokens_per_s */
static uint64_t edgec_rng;
static double edgec_uniform(void) {  /* splitmix64: the same seed gives the same text */
  uint64_t z = (edgec_rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static const float *edgec_sort_logits;
static int cmp_logit(const void *a, const void *b) {  /* larger first; ties: smaller id */
  int i = *(const int *)a, j = *(const int *)b;
  float x = edgec_sort_logits[i], y = edgec_sort_logits[j];
  return x > y ? -1 : x < y ? 1 : (i > j) - (i < j);
}

static int32_t edgec_sample(const float *logits, double temperature, int top_k) {
  static int order[EDGEC_LM_TOKENS];
  int n = EDGEC_LM_TOKENS;
  int best = 0;
  for (int i = 1; i < n; ++i) if (logits[i] > logits[best]) best = i;
  if (temperature <= 0) return best;
  for (int i = 0; i < n; ++i) order[i] = i;
  edgec_sort_logits = logits;
  qsort(order, (size_t)n, sizeof(int), cmp_logit);
  if (top_k > 0 && top_k < n) n = top_k;
  double total = 0, w[EDGEC_LM_TOKENS];
  for (int i = 0; i < n; ++i) total += w[i] = exp((logits[order[i]] - logits[best]) / temperature);
  double u = edgec_uniform() * total;
  for (int i = 0; i < n; ++i) if ((u -= w[i]) < 0) return order[i];
  return order[n - 1];
}

static void edgec_put_byte(int c) {
  if (c == '\\n' || c == '\\t' || (c >= 32 && c < 127)) putchar(c);
  else printf("\\\\x%02x", c);
}

static int lm_fail(int rc) {
  fprintf(stderr, "model: %s%s\\n", rc == EDGEC_MODEL_BAD_INPUT ? "bad input: " :
          rc == EDGEC_LM_CONTEXT_FULL ? "" : "inference failed: ", edgec_model_last_error());
  return rc == -1 ? 1 : 2;
}

static int lm_number(const char *flag, const char *text, double lo, double hi, double *out) {
  char *end;
  double v = strtod(text, &end);
  if (!*text || *end || !(v >= lo && v <= hi)) {
    fprintf(stderr, "model: %s takes a number from %g to %g, not '%s'\\n", flag, lo, hi, text);
    return -1;
  }
  *out = v;
  return 0;
}

static int lm_bench(int steps) {
  static float logits[EDGEC_LM_VOCAB];
  double *t = malloc(sizeof(double) * (size_t)steps);
  if (!t) return 2;
  int32_t tok = 'T';
  edgec_lm_reset();
  int rc = edgec_lm_prefill(&tok, 1, logits);
  for (int i = 0; i < steps && rc == 0; ++i) {
    if (edgec_lm_position() >= EDGEC_LM_CONTEXT) {  /* full: start again (not timed) */
      edgec_lm_reset();
      rc = edgec_lm_prefill(&tok, 1, logits);
      if (rc) break;
    }
    tok = edgec_sample(logits, 0, 0);
    double t0 = now_ms();
    rc = edgec_lm_step(tok, logits);
    t[i] = now_ms() - t0;
  }
  if (rc) { free(t); return lm_fail(rc); }
  qsort(t, (size_t)steps, sizeof(double), cmp_double);
  double median = steps % 2 ? t[steps / 2] : (t[steps / 2 - 1] + t[steps / 2]) / 2;
  printf("decode steps %d, min %.4f ms, median %.4f ms, max %.4f ms per token\\n", steps, t[0],
         median, t[steps - 1]);
  printf("decode_tokens_per_s %.2f\\n", median > 0 ? 1e3 / median : 0.0);
  free(t);
  return 0;
}

static int lm_main(int argc, char **argv) {
  static float logits[EDGEC_LM_VOCAB];
  static int32_t prompt[EDGEC_LM_CONTEXT + 1];
  const char *text = NULL, *logits_path = NULL;
  double tokens = 32, temperature = 0.8, top_k = 40, seed = 0, bench = 0;
  int as_ids = 0;
  for (int i = 1; i < argc; ++i) {
    const char *a = argv[i];
    int has = i + 1 < argc;
    if (!strcmp(a, "--ids")) { as_ids = 1; continue; }
    if (!strcmp(a, "--help")) {
      printf("usage: %s --prompt TEXT [--tokens N (32)] [--temperature T (0.8; 0: greedy)]\\n"
             "         [--top-k K (40; 0: all)] [--seed S (0)] [--ids] [--logits FILE]\\n"
             "       %s --bench-tokens N\\n"
             "       %s IN0.bin ... OUT0.bin ... | --bench N | --info   (one graph call)\\n"
             "context %d tokens, %d per graph call, token ids 0..%d\\n", argv[0], argv[0],
             argv[0], EDGEC_LM_CONTEXT, EDGEC_LM_SEQ, EDGEC_LM_TOKENS - 1);
      return 0;
    }
    if (!has) { fprintf(stderr, "model: %s needs a value\\n", a); return 2; }
    const char *v = argv[++i];
    if (!strcmp(a, "--prompt")) text = v;
    else if (!strcmp(a, "--logits")) logits_path = v;
    else if (!strcmp(a, "--tokens")) { if (lm_number(a, v, 1, 1e9, &tokens)) return 2; }
    else if (!strcmp(a, "--temperature")) { if (lm_number(a, v, 0, 100, &temperature)) return 2; }
    else if (!strcmp(a, "--top-k")) { if (lm_number(a, v, 0, EDGEC_LM_TOKENS, &top_k)) return 2; }
    else if (!strcmp(a, "--seed")) { if (lm_number(a, v, 0, 9007199254740992.0, &seed)) return 2; }
    else if (!strcmp(a, "--bench-tokens")) { if (lm_number(a, v, 1, 1e7, &bench)) return 2; }
    else { fprintf(stderr, "model: unknown option %s\\n", a); return 2; }
  }
  if (bench > 0) return lm_bench((int)bench);
  if (!text) { fprintf(stderr, "model: --prompt TEXT is required\\n"); return 2; }
  size_t len = strlen(text);
  if (len == 0) { fprintf(stderr, "model: the prompt is empty\\n"); return 2; }
  if (len > EDGEC_LM_CONTEXT) {
    fprintf(stderr, "model: context full: the prompt has %zu bytes, the context holds %d\\n",
            len, EDGEC_LM_CONTEXT);
    return 2;
  }
  for (size_t k = 0; k < len; ++k) prompt[k] = (unsigned char)text[k];
  int n = (int)tokens;
  int room = EDGEC_LM_CONTEXT - (int)len + 1;  /* the last token is never fed back */
  if (n > room) {
    fprintf(stderr, "model: --tokens %d limited to %d: the context holds %d tokens\\n", n,
            room, EDGEC_LM_CONTEXT);
    n = room;
  }
  FILE *lf = NULL;
  if (logits_path && !(lf = fopen(logits_path, "wb"))) {
    fprintf(stderr, "model: cannot write %s\\n", logits_path);
    return 2;
  }
  edgec_rng = (uint64_t)seed;
  edgec_lm_reset();
  double t0 = now_ms();
  int rc = edgec_lm_prefill(prompt, (int)len, logits);
  double t_prefill = now_ms() - t0, t_decode = 0;
  if (rc) { if (lf) fclose(lf); return lm_fail(rc); }
  if (!as_ids) for (size_t k = 0; k < len; ++k) edgec_put_byte((unsigned char)text[k]);
  for (int i = 0; i < n; ++i) {
    if (lf) fwrite(logits, sizeof(float), EDGEC_LM_VOCAB, lf);
    int32_t tok = edgec_sample(logits, temperature, (int)top_k);
    if (as_ids) printf("%d\\n", (int)tok); else edgec_put_byte(tok);
    if (i + 1 < n) {
      double t1 = now_ms();
      rc = edgec_lm_step(tok, logits);
      t_decode += now_ms() - t1;
      if (rc) { if (lf) fclose(lf); return lm_fail(rc); }
    }
  }
  if (lf && fclose(lf) != 0) {
    fprintf(stderr, "model: cannot write %s\\n", logits_path);
    return 2;
  }
  if (!as_ids) putchar('\\n');
  printf("prefill %.1f tokens/s (%zu tokens), decode %.1f tokens/s (%d tokens)\\n",
         t_prefill > 0 ? len * 1e3 / t_prefill : 0.0, len,
         t_decode > 0 ? (n - 1) * 1e3 / t_decode : 0.0, n - 1);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && argv[1][0] == '-' && argv[1][1] == '-' && strcmp(argv[1], "--info") &&
      strcmp(argv[1], "--bench"))
    return lm_main(argc, argv);
  return edgec_tensor_main(argc, argv);
}
"""


def main_c(plan: KernelPlan) -> str:
    """The generic raw-tensor main (``model IN.bin ... OUT.bin``, --bench, --info) with the
    generation CLI in front of it."""
    base = tensor_main_c(plan)
    if "int main(int argc, char **argv) {" not in base:
        raise ModelError("internal: main.c has an unexpected form")
    base = base.replace("int main(int argc, char **argv) {",
                        "static int edgec_tensor_main(int argc, char **argv) {")
    base = base.replace("#include <time.h>\n", "#include <time.h>\n#include <math.h>\n")
    return base + MAIN_LM_C


def weight_bytes_per_token(plan: KernelPlan) -> int:
    """Bytes of constants one call reads: every weight once, except a table read only by
    Gather (``take``) kernels, of which only the gathered rows count (the token embedding).
    On a board whose cache cannot hold the weights, decode streams them from DRAM per token."""
    readers: dict[int, list] = {}
    for call in plan.calls:
        for b in call.inputs:
            if plan.buffers[b].kind == "const":
                readers.setdefault(b, []).append(call)
    total = 0
    for b, calls in readers.items():
        if all(c.kernel.rstrip("0123456789") == "take" and c.inputs[0] == b for c in calls):
            total += sum(plan.buffers[c.outputs[0]].nbytes for c in calls)
        else:
            total += plan.buffers[b].nbytes
    return int(total)
