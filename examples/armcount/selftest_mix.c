/* selftest_mix: "selftest_mix N" executes N x (1 sdot vector, 1 sdot by element, 1 udot, 2 fmla .4s,
 * 1 smull .8b, 1 smlal .8b, 1 sadalp .4s) for the plugin's match= counters (built with +dotprod:
 * run it with -cpu cortex-a76). The empty asm statements keep each intrinsic one instruction. */
#include <arm_neon.h>
#include <stdlib.h>
int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 0;
  int32x4_t acc = vdupq_n_s32(0), wide = vdupq_n_s32(0);
  uint32x4_t uacc = vdupq_n_u32(0);
  int8x16_t a = vdupq_n_s8(1), b = vdupq_n_s8(2);
  uint8x16_t ua = vdupq_n_u8(1);
  int8x8_t c = vdup_n_s8(3), d = vdup_n_s8(4);
  int16x8_t p = vdupq_n_s16(0);
  float32x4_t f = vdupq_n_f32(0), g = vdupq_n_f32(1);
  for (int i = 0; i < n; ++i) {
    acc = vdotq_s32(acc, a, b);
    acc = vdotq_laneq_s32(acc, a, b, 1);
    uacc = vdotq_u32(uacc, ua, ua);
    f = vfmaq_f32(f, g, g);
    f = vfmaq_laneq_f32(f, g, g, 2);
    p = vmull_s8(c, d);
    __asm__ volatile("" : "+w"(p));
    p = vmlal_s8(p, c, d);
    __asm__ volatile("" : "+w"(p));
    wide = vpadalq_s16(wide, p);
    __asm__ volatile("" : "+w"(acc), "+w"(uacc), "+w"(f), "+w"(wide), "+w"(c), "+w"(g));
  }
  return vgetq_lane_s32(acc, 0) + (int)vgetq_lane_u32(uacc, 0) + (int)vgetq_lane_f32(f, 0) +
         vgetq_lane_s32(wide, 0) == 7;
}
