/* classify: the smallest application around an edgec library.
 *
 *   classify INPUT.bin      INPUT.bin: the model's input as raw bytes (EDGEC_MODEL_INPUT_BYTES,
 *                           e.g. numpy's x.astype("float32").tofile("x.bin"))
 *
 * Prints "argmax N" (the index of the largest value of the model's first output) and the
 * output values. Everything the model needs is in model.h and libmodel.a: no heap, no runtime.
 */
#include <stdio.h>
#include <string.h>

#include "model.h"

/* A whole input and output, statically: the library uses no heap, neither does the app. */
static unsigned char input[EDGEC_MODEL_INPUT_BYTES];
static edgec_model_output0_t output[EDGEC_MODEL_OUTPUT_BYTES / sizeof(edgec_model_output0_t)];

static int read_input(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "classify: cannot open %s\n", path);
    return -1;
  }
  size_t got = fread(input, 1, sizeof input, f);
  int extra = fgetc(f) != EOF;
  fclose(f);
  if (got != sizeof input || extra) {
    fprintf(stderr, "classify: %s must hold exactly %u bytes (the model's input)\n", path,
            (unsigned)EDGEC_MODEL_INPUT_BYTES);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: classify INPUT.bin\n");
    return 2;
  }
  if (read_input(argv[1]) != 0) return 2;
  if (edgec_model_run(input, output) != 0) {
    fprintf(stderr, "classify: %s\n", edgec_model_last_error());
    return 1;
  }
  unsigned best = 0;
  for (unsigned i = 1; i < EDGEC_MODEL_OUTPUT0_ELEMENTS; ++i)
    if (output[i] > output[best]) best = i;
  printf("argmax %u\n", best);
  for (unsigned i = 0; i < EDGEC_MODEL_OUTPUT0_ELEMENTS; ++i)
    printf("%s%g", i ? " " : "", (double)output[i]);
  printf("\n");
  return 0;
}
