"""Compression benchmark: the accuracy bars of issue 3, measured by onnxruntime on exported ONNX.

Run: ``python examples/bench_compression.py [--cache-dir DIR] [--json OUT.json]``

Every figure is the top-1 accuracy on the digits test split (450 images, 75 for mlp16's five
classes), computed by onnxruntime on the ONNX file that ``export_onnx`` wrote; "drop" is the
float model's onnxruntime accuracy minus the compressed one's, in points (one test image is
0.22 points). Exits 1 if a bar fails. Takes a few minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from toolchain import models
from toolchain.compress import (Context, Distill, LowRank, Prune, PruneChannels, Quantize,
                                compress, export_onnx, onnx_accuracy, quantization_meta)


def _label(step) -> str:
    c = step.to_json()
    if step.name == "quantize":
        extra = f",{c['calibration']}" if c["calibration"] != "minmax" else ""
        extra += f",qat{c['qat_epochs']}" if c["qat_epochs"] else ""
        return f"{c['mode']}{extra}"
    if step.name == "prune":
        return f"prune{c['sparsity']:g}"
    if step.name == "prune-channels":
        return f"channels{c['fraction']:g}"
    if step.name == "lowrank":
        return f"lowrank(p{c['params_ratio']:g})" if c["params_ratio"] else f"lowrank(e{c['energy']:g})"
    return step.name


def run(name: str, steps, out: Path, start=None, tag: str = ""):
    """Compress ``name`` (trained zoo model unless ``start``), export, measure with onnxruntime."""
    ctx = Context.for_zoo(name)
    model = start if start is not None else models.trained(name)
    t = time.perf_counter()
    small, report = compress(model, steps, ctx, name)
    mode = next((s.mode for s in steps if s.name == "quantize"), None)
    path = out / f"{name}{tag}.onnx"
    res = export_onnx(small, path, ctx.X_test, steps=report.step_configs(),
                      mode=quantization_meta(mode))
    acc = onnx_accuracy(path, ctx.X_test, ctx.y_test)
    return {"model": name, "steps": "+".join(_label(s) for s in steps) or "float",
            "params": report.final.params, "nonzeros": report.final.nonzeros,
            "macs": report.final.macs, "bytes": report.final.bytes, "onnx_bytes": res.file_bytes,
            "accuracy": round(acc, 3), "ort_max_err": res.max_abs_error,
            "ort_fused_steps": res.optimized_max_steps, "seconds": round(time.perf_counter() - t, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, help="zoo weight cache (default ~/.cache/edgec/zoo)")
    ap.add_argument("--json", type=Path, help="also write all rows and bars as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, bars = [], []

    def bar(text: str, value: float, limit: float, ok: bool):
        bars.append({"bar": text, "value": round(value, 3), "limit": limit, "pass": ok})

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cache = args.cache_dir
        for n in ("cnn", "cnn_small", "mlp", "dscnn", "mlp16", "transformer"):
            models.trained(n, cache)  # train (or load) before timing the steps
        base = {n: run(n, [], out, models.trained(n, cache), "-float")
                for n in ("cnn", "cnn_small", "mlp", "dscnn", "mlp16", "transformer")}
        rows += base.values()

        def drop(row):
            return base[row["model"]]["accuracy"] - row["accuracy"]

        r = run("cnn", [Quantize("int8")], out, models.trained("cnn", cache), "-int8")
        rows.append(r)
        bar("cnn int8 PTQ (minmax): drop <= 0.5", drop(r), 0.5, drop(r) <= 0.5)
        for cal in ("percentile", "histogram"):
            rows.append(run("cnn", [Quantize("int8", calibration=cal)], out,
                            models.trained("cnn", cache), f"-int8-{cal}"))

        r = run("cnn", [Prune(0.75), Quantize("int8")], out, models.trained("cnn", cache), "-p75")
        rows.append(r)
        sparsity = 1 - r["nonzeros"] / base["cnn"]["params"]
        bar("cnn 75% sparsity + int8: drop <= 1.0", drop(r), 1.0, drop(r) <= 1.0)

        r = run("cnn", [PruneChannels(0.5)], out, models.trained("cnn", cache), "-ch50")
        rows.append(r)
        ratio = r["macs"] / base["cnn"]["macs"]
        bar("cnn 50% channel pruning: MACs ratio <= 0.5", ratio, 0.5, ratio <= 0.5)
        bar("cnn 50% channel pruning: drop (reported)", drop(r), float("nan"), True)

        teacher = models.trained("cnn", cache)
        r = run("cnn_small", [Distill(teacher, "cnn")], out, models.build("cnn_small"), "-kd")
        rows.append(r)
        pratio = r["params"] / base["cnn"]["params"]
        gap = base["cnn"]["accuracy"] - r["accuracy"]
        bar("student params / teacher params <= 0.25", pratio, 0.25, pratio <= 0.25)
        bar("distilled student within 1.5 of teacher", gap, 1.5, gap <= 1.5)
        bar("distilled minus label-only student (reported)",
            r["accuracy"] - base["cnn_small"]["accuracy"], float("nan"), True)

        r = run("mlp", [LowRank(energy=None, params_ratio=0.5)], out,
                models.trained("mlp", cache), "-lr50")
        rows.append(r)
        pr = r["params"] / base["mlp"]["params"]
        bar("mlp low-rank params ratio <= 0.5", pr, 0.5, pr <= 0.5)
        bar("mlp low-rank at half params: drop <= 1.0", drop(r), 1.0, drop(r) <= 1.0)

        # More of the toolchain, no bars: other models and modes.
        rows.append(run("cnn", [Quantize("int4", qat_epochs=5)], out, models.trained("cnn", cache), "-int4"))
        rows.append(run("dscnn", [Quantize("int8")], out, models.trained("dscnn", cache), "-int8"))
        rows.append(run("transformer", [Quantize("int8")], out,
                        models.trained("transformer", cache), "-int8"))
        rows.append(run("mlp16", [Prune(0.5), Quantize("fixed<8,3>", qat_epochs=10)], out,
                        models.trained("mlp16", cache), "-fixed"))
        rows.append(run("cnn_small", [Distill(teacher, "cnn"), Prune(0.5), Quantize("int8")], out,
                        models.build("cnn_small"), "-kd-p50-int8"))

    print(f"{'model':<12}{'steps':<36}{'params':>8}{'nonzero':>8}{'MACs':>9}{'bytes':>8}"
          f"{'acc%':>8}{'drop':>7}{'s':>6}")
    for r in rows:
        print(f"{r['model']:<12}{r['steps']:<36}{r['params']:>8}{r['nonzeros']:>8}{r['macs']:>9}"
              f"{r['bytes']:>8}{r['accuracy']:>8.2f}{base[r['model']]['accuracy'] - r['accuracy']:>7.2f}"
              f"{r['seconds']:>6.1f}")
    print(f"(cnn 75% prune: measured sparsity of all parameters {sparsity:.3f})")
    print()
    failed = 0
    for b in bars:
        status = "PASS" if b["pass"] else "FAIL"
        failed += not b["pass"]
        lim = "" if b["limit"] != b["limit"] else f" (limit {b['limit']})"
        print(f"{status}  {b['bar']}: {b['value']:.3f}{lim}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "bars": bars}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
