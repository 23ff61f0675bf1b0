#!/usr/bin/env bash
# Generate text from the zoo language model with a static binary on a Cortex-A72 under qemu.
#
#   bash examples/lm_generate.sh [OUT] [PROMPT] [TOKENS]
#
# 1. the zoo `lm` (trained on pydoc_data.topics, or taken from the cache) exported as an S = 1
#    decode graph with a KV cache (toolchain/compress/lm_export.py);
# 2. `edgec compile` for arm-a72: it recognises the decode-graph contract and emits `model`,
#    a static aarch64 executable whose KV cache is a static buffer updated in place;
# 3. `edgec verify`: greedy generation identical token by token to onnxruntime in the same loop;
# 4. the binary under qemu: greedy, then sampled (temperature 0.8, top-k 40, seed 1: the same
#    seed prints the same text), and its generated ids. The last line of each run gives the
#    prefill and decode tokens/s (under emulation: not a board's speed).
set -euo pipefail
OUT=${1:-build/lm-arm-a72}
PROMPT=${2:-"The "}
TOKENS=${3:-80}
mkdir -p "$(dirname "$OUT")"

python3 - "$OUT.onnx" <<'EOF'
import sys
from toolchain import models
from toolchain.compress.lm_export import export_lm

export_lm(models.trained("lm"), sys.argv[1], seq_len=1)
EOF
python3 -m toolchain compile "$OUT.onnx" -t arm-a72 -o "$OUT"
python3 -m toolchain verify "$OUT"

QEMU=(qemu-aarch64 -cpu cortex-a72)
echo "--- greedy"
"${QEMU[@]}" "$OUT/model" --prompt "$PROMPT" --tokens "$TOKENS" --temperature 0
echo "--- sampled (temperature 0.8, top-k 40, seed 1)"
"${QEMU[@]}" "$OUT/model" --prompt "$PROMPT" --tokens "$TOKENS" --temperature 0.8 --top-k 40 --seed 1
echo "--- ids (greedy, 8 tokens)"
"${QEMU[@]}" "$OUT/model" --prompt "$PROMPT" --tokens 8 --temperature 0 --ids
