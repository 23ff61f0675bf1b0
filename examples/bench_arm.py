"""Speed and memory of edgec's CPU binaries against onnxruntime, side by side.

For each model: compile for the host (the binary's own --bench gives the median ms), time
onnxruntime (all graph optimizations, median of the same number of runs), and print the ratio.
``--threads N`` builds edgec with ``--threads N`` and gives onnxruntime the same number of
intra-op threads (default 1 for both). Also compiles with ``--schedule none`` (TVM's plain loops) to show what the CPU
schedule rules buy, and reports arena bytes with and without reuse.

    python examples/bench_arm.py [--runs 20] [--models squeezenet,resnet50,cnn] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from toolchain.cli import main as edgec
from toolchain.onnx_io import input_specs, randomize_weights, save_model
from toolchain.reference import ort_session
from toolchain.targets import device
from toolchain.targets.cpu.device import CpuDevice
from toolchain.targets.cpu.runner import bench_binary

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def prepare(name: str, folder: Path) -> tuple[Path, list[str]]:
    path = folder / f"{name}.onnx"
    if (LIGHT / f"light_{name}.onnx").exists():
        save_model(randomize_weights(onnx.load(str(LIGHT / f"light_{name}.onnx"))), path)
        return path, []
    subprocess.run([sys.executable, "-m", "toolchain", "compress", name, "-o", str(path)],
                   check=True, capture_output=True)
    m = onnx.load(str(path))
    dims = [d.dim_value or 1 for d in m.graph.input[0].type.tensor_type.shape.dim]
    return path, ["--input-shape", f"{m.graph.input[0].name}={','.join(map(str, dims))}"]


def ort_median_ms(path: Path, runs: int, shape_args: list[str], threads: int = 1) -> float:
    sess = ort_session(path, threads=threads)
    specs = input_specs(onnx.load(str(path)))
    feeds = {}
    for s, i in zip(specs, sess.get_inputs()):
        shape = tuple(d if d > 0 else 1 for d in s.shape)
        feeds[i.name] = np.random.default_rng(0).standard_normal(shape).astype(s.dtype)
    sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def edgec_build(path: Path, out: Path, shape_args: list[str], schedule: str,
                threads: int = 1) -> dict:
    rc = edgec(["compile", str(path), "-t", "host", "-o", str(out), "--schedule", schedule,
                "--threads", str(threads), *shape_args])
    if rc != 0:
        raise SystemExit(f"compile failed for {path}")
    return json.loads((out / "report.json").read_text())


def binary_median_ms(out: Path, runs: int) -> float:
    return bench_binary(CpuDevice.from_device(device("host")), out / "model", runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default="cnn,mlp,squeezenet,resnet50")
    ap.add_argument("--no-plain", action="store_true", help="skip the --schedule none builds")
    ap.add_argument("--threads", type=int, default=1,
                    help="edgec --threads N, and onnxruntime with N intra-op threads")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            path, shape_args = prepare(name, folder)
            ort = ort_median_ms(path, args.runs, shape_args, args.threads)
            rep = edgec_build(path, folder / f"{name}-auto", shape_args, "auto", args.threads)
            ours = binary_median_ms(folder / f"{name}-auto", args.runs)
            plain = None
            if not args.no_plain:
                edgec_build(path, folder / f"{name}-none", shape_args, "none")
                plain = binary_median_ms(folder / f"{name}-none", max(3, args.runs // 4))
            mem = rep["memory"]
            rows.append((name, ort, ours, plain, mem["arena_bytes"],
                         mem["arena_bytes_without_reuse"], rep["kernel_calls_before_fusion"],
                         rep["kernel_calls_after_fusion"]))
            print(f"{name}: done", file=sys.stderr)
    print(f"host, {args.threads} thread{'s' if args.threads > 1 else ''} (edgec and "
          f"onnxruntime), median of {args.runs} runs")
    print(f"{'model':<12}{'ORT ms':>9}{'edgec ms':>10}{'edgec/ORT':>10}{'plain ms':>10}"
          f"{'plain/edgec':>12}{'arena KiB':>11}{'no-reuse KiB':>13}{'calls':>11}")
    for name, ort, ours, plain, arena, noreuse, before, after in rows:
        plain_s = f"{plain:10.2f}{plain / ours:12.1f}" if plain else f"{'-':>10}{'-':>12}"
        print(f"{name:<12}{ort:9.3f}{ours:10.3f}{ours / ort:10.2f}{plain_s}"
              f"{arena / 1024:11.0f}{noreuse / 1024:13.0f}{before:>6}->{after:<4}")


if __name__ == "__main__":
    main()
