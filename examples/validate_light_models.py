"""Compile every light_* model shipped in the onnx package for each CPU target, run it (qemu
for ARM) and compare with onnxruntime; print one row per (model, target).

The models' stored weights are constant fills, so each gets seeded random weights first.
With ``--qdq`` each model (its logits: a trailing Softmax is removed) is first quantized by
onnxruntime.quantization ``quantize_static`` (per-channel int8 weights, uint8 activations), and the
int8 build (the default ``cpu-int`` pipeline for a QDQ file) must match onnxruntime on that file
within one output quantization step.

    python examples/validate_light_models.py [--targets host,arm-a72,armv7-a7] [--models ...]
                                             [--qdq]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx

from toolchain.cli import main as edgec
from toolchain.commands.build import verify_folder
from toolchain.onnx_io import randomize_weights, save_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_int8 import ort_qdq  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="host,arm-a72,armv7-a7")
    ap.add_argument("--models", default=",".join(
        sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))))
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--qdq", action="store_true",
                    help="onnxruntime.quantization QDQ versions of the models (int8 builds)")
    args = ap.parse_args()
    rows, failed = [], 0
    print(f"{'model':<14}{'target':<10}{'compile s':>10}{'run+verify s':>13}{'max rel err':>13}"
          f"{'calls':>11}{'arena MiB':>10}  status", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if args.qdq:
                _, src = ort_qdq(name, Path(tmp), logits=True)
            else:
                src = Path(tmp) / f"{name}.onnx"
                save_model(randomize_weights(onnx.load(str(LIGHT / f"light_{name}.onnx"))), src)
            for target in args.targets.split(","):
                out = Path(tmp) / f"{name}-{target}"
                t0 = time.perf_counter()
                rc = edgec(["compile", str(src), "-t", target, "-o", str(out)])
                t_compile = time.perf_counter() - t0
                if rc != 0:
                    failed += 1
                    print(f"{name:<14}{target:<10}  compile failed", flush=True)
                    continue
                t0 = time.perf_counter()
                res = verify_folder(out)
                t_run = time.perf_counter() - t0
                rep = json.loads((out / "report.json").read_text())
                ok = all(c.ok and c.output_range > 0 for c in res)
                # A constant output (range 0) proves nothing: seeded random weights can saturate
                # a quantized model. It is counted as a failure of the check, and labelled.
                flat = all(c.ok for c in res) and not ok
                failed += not ok
                err = max(c.max_rel_error for c in res)
                row = {"model": name, "target": target, "qdq": args.qdq, "compile_s": round(t_compile, 1),
                       "verify_s": round(t_run, 1), "max_rel_error": err, "ok": ok,
                       "calls_before": rep["kernel_calls_before_fusion"],
                       "calls_after": rep["kernel_calls_after_fusion"],
                       "arena_bytes": rep["memory"]["arena_bytes"],
                       "stage_seconds": rep["stage_seconds"]}
                rows.append(row)
                print(f"{name:<14}{target:<10}{t_compile:10.1f}{t_run:13.1f}{err:13.2e}"
                      f"{row['calls_before']:>6}->{row['calls_after']:<4}"
                      f"{row['arena_bytes'] / 2**20:10.1f}  "
                      f"{'ok' if ok else 'constant output' if flat else 'MISMATCH'}",
                      flush=True)
                import shutil

                shutil.rmtree(out)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{len(rows) - failed} ok, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
