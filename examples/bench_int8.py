"""Integer models on the host: edgec's int8 binary against onnxruntime on the same QDQ file.

For each QDQ model, side by side in one run and alternating: onnxruntime (all graph
optimizations, which turn QDQ into QLinearConv/QGemm integer kernels) and edgec's default build
(``--pipeline auto`` = cpu-int: int8 GEMM kernels) and, for comparison, edgec's float build of
the same file (``--pipeline cpu``) and of the float model. Medians over ``--runs``, ratios
edgec/onnxruntime, and the weight bytes in the binary.

Models: the zoo's int8 cnn and mlp (``edgec compress --quantize int8``) and an
onnxruntime.quantization ``quantize_static`` QDQ version of light_squeezenet (seeded random
weights, per-channel int8 weights, uint8 activations, calibrated on 4 seeded inputs), float and
QDQ both without the trailing Softmax (``ort_qdq(logits=True)``: outputs a verify can check).

    python examples/bench_int8.py [--runs 20] [--models cnn,mlp,squeezenet] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
from bench_arm import LIGHT, OrtTimer, binary_median_ms  # noqa: E402

from toolchain.cli import main as edgec  # noqa: E402
from toolchain.onnx_io import randomize_weights, save_model  # noqa: E402


def ort_qdq(name: str, folder: Path, logits: bool = False) -> tuple[Path, Path]:
    """(float model, QDQ model) of light_<name> quantized by onnxruntime.quantization. With
    ``logits`` the trailing Softmax is removed first: its fixed [0, 1] output grid quantizes
    1000 near-uniform probabilities to one value, which no verify can check."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    fp = folder / f"{name}_fp32.onnx"
    # onnxruntime's quantizer keeps opset 9 -> 11, where its per-channel DequantizeLinear is
    # invalid (onnxruntime itself refuses the file): quantize an opset-13 copy instead.
    from onnx import version_converter

    model = randomize_weights(onnx.load(str(LIGHT / f"light_{name}.onnx")))
    last = model.graph.node[-1]
    if logits and last.op_type == "Softmax" and last.output[0] == model.graph.output[0].name:
        model.graph.output[0].name = last.input[0]
        model.graph.output[0].type.tensor_type.ClearField("shape")
        del model.graph.node[-1]
        del model.graph.value_info[:]
    # IR 7, initializers no longer graph inputs: in the IR-3 file the quantizer writes (its
    # initializers dropped from the inputs) shape inference misses most shapes
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.ir_version = 7
    model = version_converter.convert_version(model, 13)
    save_model(model, fp)
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.data = iter([{inp.name: rng.standard_normal(shape).astype(np.float32)}
                              for _ in range(4)])

        def get_next(self):
            return next(self.data, None)

    q = folder / f"{name}_qdq.onnx"
    quantize_static(str(fp), str(q), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return fp, q


def zoo_pair(name: str, folder: Path) -> tuple[Path, Path, list[str]]:
    fp, q = folder / f"{name}_fp32.onnx", folder / f"{name}_int8.onnx"
    for path, flags in ((fp, []), (q, ["--quantize", "int8"])):
        subprocess.run([sys.executable, "-m", "toolchain", "compress", name, *flags,
                        "-o", str(path)], check=True, capture_output=True)
    m = onnx.load(str(q))
    dims = [d.dim_value or 1 for d in m.graph.input[0].type.tensor_type.shape.dim]
    return fp, q, ["--input-shape", f"{m.graph.input[0].name}={','.join(map(str, dims))}"]


def build(path: Path, out: Path, shape_args: list[str], pipeline: str, threads: int) -> dict:
    rc = edgec(["compile", str(path), "-t", "host", "-o", str(out), "--pipeline", pipeline,
                "--threads", str(threads), *shape_args])
    if rc != 0:
        raise SystemExit(f"compile failed for {path} ({pipeline})")
    return json.loads((out / "report.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default="cnn,mlp,squeezenet")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print("command: python examples/bench_int8.py " + " ".join(sys.argv[1:]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            if (LIGHT / f"light_{name}.onnx").exists():
                fp, q = ort_qdq(name, folder, logits=True)  # both without the Softmax
                shape_args: list[str] = []
            else:
                fp, q, shape_args = zoo_pair(name, folder)
            r_int = build(q, folder / f"{name}-int", shape_args, "auto", args.threads)
            r_qf = build(q, folder / f"{name}-qfloat", shape_args, "cpu", args.threads)
            r_fp = build(fp, folder / f"{name}-fp32", shape_args, "auto", args.threads)
            # Alternate the measurements so that machine noise hits all alike.
            t = {"ort_q": [], "int": [], "qfloat": [], "ort_fp": [], "fp32": []}
            # One onnxruntime session per file (inputs of size 1 for dynamic dimensions, as
            # --input-shape gives edgec), kept over the rounds.
            ort_q, ort_fp = OrtTimer(q, args.threads), OrtTimer(fp, args.threads)
            exe = {k: folder / f"{name}-{k}" / "model" for k in ("int", "qfloat", "fp32")}
            for _ in range(3):
                t["ort_q"].append(float(np.median(ort_q.times_ms(args.runs))))
                t["int"].append(binary_median_ms(exe["int"], args.runs))
                t["qfloat"].append(binary_median_ms(exe["qfloat"], args.runs))
                t["ort_fp"].append(float(np.median(ort_fp.times_ms(args.runs))))
                t["fp32"].append(binary_median_ms(exe["fp32"], args.runs))
            med = {k: float(np.median(v)) for k, v in t.items()}
            rows.append((name, med, r_int["memory"]["weight_bytes"],
                         r_fp["memory"]["weight_bytes"], r_qf["memory"]["weight_bytes"]))
            print(f"{name}: done", file=sys.stderr)
    print(f"host, {args.threads} thread(s) for edgec and onnxruntime; medians of 3 x {args.runs} runs")
    print(f"{'model':<12}{'ORT int8':>10}{'edgec int8':>11}{'ratio':>7}{'edgec qdq-float':>16}"
          f"{'ORT fp32':>10}{'edgec fp32':>11}{'ratio':>7}{'int8/fp32':>10}"
          f"{'weights int8/fp32':>19}")
    ratios = []
    for name, m, w_int, w_fp, w_qf in rows:
        ratios.append(m["int"] / m["ort_q"])
        print(f"{name:<12}{m['ort_q']:10.3f}{m['int']:11.3f}{m['int'] / m['ort_q']:7.2f}"
              f"{m['qfloat']:16.3f}{m['ort_fp']:10.3f}{m['fp32']:11.3f}"
              f"{m['fp32'] / m['ort_fp']:7.2f}{m['int'] / m['fp32']:10.2f}"
              f"{w_int:>10}/{w_fp:<8}")
    print(f"geometric mean edgec int8 / onnxruntime int8: "
          f"{math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")


if __name__ == "__main__":
    main()
