/* selftest: a loop of known length. "selftest N" runs N iterations of a 5-instruction body
 * (at -O1: add, eor with shift, add, cmp, b.ne on aarch64; the same count on armv7), so
 * count(N=2e6) - count(N=1e6) is exactly 5e6. */
#include <stdlib.h>
int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 0;
  unsigned long x = 1;
  for (long i = 0; i < n; ++i) { x += (unsigned long)i; __asm__ volatile("" : "+r"(x)); x ^= x >> 3; }
  return (int)(x & 1);
}
