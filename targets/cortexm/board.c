/* board.c: shipped with edgec. Start-up and Arm semihosting for Cortex-M images that run on the
 * MPS2/MPS3 board models of qemu-system-arm (or a real board under a semihosting debugger).
 *
 * The vector table holds the initial stack pointer (the top of SRAM, from the linker script) and
 * the reset handler, which enables the FPU, copies .data from flash, zeroes .bss and calls main;
 * main's return value becomes the emulator's exit status. Every fault ends the run with status 3
 * and a message, so a bad access is an error, not a hang. Semihosting requests are "bkpt 0xab"
 * with the operation in r0 and a parameter block in r1 (Arm's semihosting specification v2). */
#include <stdint.h>
#include <string.h>
#include "board.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;
int main(void);

static int edgec_semi(int op, const void *arg) {
  register int r0 __asm("r0") = op;
  register const void *r1 __asm("r1") = arg;
  __asm volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

void edgec_exit(int code) {
  uint32_t blk[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, (uint32_t)code};
  edgec_semi(0x20 /* SYS_EXIT_EXTENDED */, blk);
  for (;;) {}
}

static void edgec_start(void) __attribute__((noreturn, used));
static void edgec_start(void) {
  /* CPACR: full access to CP10/CP11 (the FPU, and MVE on v8.1-M) before any float code. */
  *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
  __asm volatile("dsb\n\tisb" ::: "memory");
  for (uint32_t *s = &__data_load, *d = &__data_start; d < &__data_end;) *d++ = *s++;
  for (uint32_t *d = &__bss_start; d < &__bss_end;) *d++ = 0;
  edgec_exit(main());
}

/* Naked: no prologue may touch the stack or the FPU before edgec_start runs. */
__attribute__((naked, noreturn)) void edgec_reset(void) { __asm volatile("b edgec_start"); }

static void edgec_fault(void) {
  edgec_puts_err("model: fault (hard fault, bus fault or usage fault)\n");
  edgec_exit(3);
}

__attribute__((section(".vectors"), used)) static void *const edgec_vectors[16] = {
    &__stack_top, (void *)edgec_reset, (void *)edgec_fault, (void *)edgec_fault,
    (void *)edgec_fault, (void *)edgec_fault, (void *)edgec_fault, 0, 0, 0, 0,
    (void *)edgec_fault, (void *)edgec_fault, 0, (void *)edgec_fault, (void *)edgec_fault};

int edgec_open(const char *path, int mode) {
  uint32_t blk[3] = {(uint32_t)path, (uint32_t)mode, (uint32_t)strlen(path)};
  return edgec_semi(0x01 /* SYS_OPEN */, blk);
}

int edgec_close(int fd) {
  uint32_t blk[1] = {(uint32_t)fd};
  return edgec_semi(0x02 /* SYS_CLOSE */, blk);
}

long edgec_file_length(int fd) {
  uint32_t blk[1] = {(uint32_t)fd};
  return edgec_semi(0x0C /* SYS_FLEN */, blk);
}

size_t edgec_read(int fd, void *buf, size_t n) {  /* bytes read */
  uint32_t blk[3] = {(uint32_t)fd, (uint32_t)buf, (uint32_t)n};
  return n - (size_t)edgec_semi(0x06 /* SYS_READ */, blk);
}

size_t edgec_write(int fd, const void *buf, size_t n) {  /* bytes written */
  uint32_t blk[3] = {(uint32_t)fd, (uint32_t)buf, (uint32_t)n};
  return n - (size_t)edgec_semi(0x05 /* SYS_WRITE */, blk);
}

int edgec_command_line(char *buf, size_t n) {
  uint32_t blk[2] = {(uint32_t)buf, (uint32_t)n};
  return edgec_semi(0x15 /* SYS_GET_CMDLINE */, blk) == 0 ? 0 : -1;
}

static int edgec_tty(int mode) {
  static int fds[2] = {-1, -1};
  int *fd = &fds[mode == 8];
  if (*fd < 0) *fd = edgec_open(":tt", mode);  /* ":tt" opened "w" is stdout, "a" stderr */
  return *fd;
}

void edgec_puts(const char *s) { edgec_write(edgec_tty(4), s, strlen(s)); }
void edgec_puts_err(const char *s) { edgec_write(edgec_tty(8), s, strlen(s)); }

char *edgec_utoa(char *p, unsigned long v) {
  char digits[24];
  int n = 0;
  do { digits[n++] = (char)('0' + (int)(v % 10)); v /= 10; } while (v);
  while (n) *p++ = digits[--n];
  *p = 0;
  return p;
}
