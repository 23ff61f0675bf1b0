/* board.h: shipped with edgec. Start-up and semihosting I/O of board.c. */
#ifndef EDGEC_BOARD_H
#define EDGEC_BOARD_H
#include <stddef.h>

#define EDGEC_OPEN_RB 1 /* semihosting open modes: fopen's "rb" and "wb" */
#define EDGEC_OPEN_WB 5

void edgec_exit(int code) __attribute__((noreturn));
int edgec_open(const char *path, int mode); /* -1 on failure */
int edgec_close(int fd);
long edgec_file_length(int fd);
size_t edgec_read(int fd, void *buf, size_t n);
size_t edgec_write(int fd, const void *buf, size_t n);
int edgec_command_line(char *buf, size_t n);
void edgec_puts(const char *s);
void edgec_puts_err(const char *s);
char *edgec_utoa(char *p, unsigned long v);
#endif
