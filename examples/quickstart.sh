#!/usr/bin/env bash
# The main job on the built-in default model, from a fresh machine:
# set up, train the zoo CNN on the digits data, quantize it to int8, export QDQ ONNX,
# compile it for a Cortex-A72 with no runtime, run it under qemu and check it against
# onnxruntime, then time it. Everything lands in out/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
OUT=out/quickstart
mkdir -p "$OUT"
set -x
edgec targets
edgec compress cnn --quantize int8 -o "$OUT/cnn_int8.onnx"
edgec compile "$OUT/cnn_int8.onnx" --target arm-a72 --input-shape input=1,1,8,8 -o "$OUT/cnn-a72"
edgec verify "$OUT/cnn-a72"
qemu-aarch64 -cpu cortex-a72 "$OUT/cnn-a72/model" --info
qemu-aarch64 -cpu cortex-a72 "$OUT/cnn-a72/model" --bench 20
