"""Speed and memory of edgec's CPU binaries against onnxruntime, side by side.

For each model: compile for the host (the binary's own --bench gives the median ms), time
onnxruntime (all graph optimizations), and print the ratio edgec/onnxruntime, then the
geometric mean of the ratios over the models. The two are timed alternately, in ``--rounds``
blocks of ``runs / rounds`` inferences each (edgec's block median from its --bench, every
onnxruntime run kept), so a change of machine load hits both; each side's figure is the median.
``--threads 1,2`` builds edgec once per thread count (``--threads N``) and gives onnxruntime
the same number of intra-op threads; the counts alternate too. Also compiles with
``--schedule none`` (TVM's plain loops, first thread count) to show what the CPU schedule rules
buy, and reports arena bytes with and without reuse.

Model names: a light_* model of the onnx package without its prefix (squeezenet, resnet50,
shufflenet, inception_v1, inception_v2, densenet121, bvlc_alexnet, zfnet512, vgg19; seeded
random weights), else a zoo model (cnn, mlp, dscnn, resnet8, vww_mobilenet, kws_dscnn, ...).
Sub-millisecond zoo models measure onnxruntime's per-call overhead more than its kernels.

    python examples/bench_arm.py [--runs 20] [--models squeezenet,resnet50,cnn] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


class OrtTimer:
    """One onnxruntime session (``threads`` intra-op threads) and its seeded inputs."""

    def __init__(self, path: Path, threads: int = 1):
        self.sess = ort_session(path, threads=threads)
        self.feeds = {}
        for s, i in zip(input_specs(onnx.load(str(path))), self.sess.get_inputs()):
            shape = tuple(d if d > 0 else 1 for d in s.shape)
            self.feeds[i.name] = np.random.default_rng(0).standard_normal(shape).astype(s.dtype)
        self.sess.run(None, self.feeds)

    def times_ms(self, runs: int) -> list[float]:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.sess.run(None, self.feeds)
            times.append((time.perf_counter() - t0) * 1e3)
        return times


def edgec_build(path: Path, out: Path, shape_args: list[str], schedule: str,
                threads: int = 1) -> dict:
    rc = edgec(["compile", str(path), "-t", "host", "-o", str(out), "--schedule", schedule,
                "--threads", str(threads), *shape_args])
    if rc != 0:
        raise SystemExit(f"compile failed for {path}")
    return json.loads((out / "report.json").read_text())


def binary_median_ms(binary: Path, runs: int) -> float:
    return bench_binary(CpuDevice.from_device(device("host")), binary, runs)


def alternate(binaries: dict[int, Path], timers: dict[int, OrtTimer], runs: int,
              rounds: int) -> dict[int, tuple[float, float]]:
    """Per thread count, (onnxruntime ms, edgec ms), medians, timed in alternating blocks."""
    block = max(1, -(-runs // rounds))
    ort: dict[int, list[float]] = {t: [] for t in binaries}
    ours: dict[int, list[float]] = {t: [] for t in binaries}
    for _ in range(max(1, -(-runs // block))):
        for t in binaries:
            ours[t].append(binary_median_ms(binaries[t], block))
            ort[t].extend(timers[t].times_ms(block))
    return {t: (statistics.median(ort[t]), statistics.median(ours[t])) for t in binaries}


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="timed inferences per side (>= 20)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating blocks the runs are split into")
    ap.add_argument("--models", default="cnn,mlp,squeezenet,resnet50")
    ap.add_argument("--no-plain", action="store_true", help="skip the --schedule none builds")
    ap.add_argument("--threads", default="1",
                    help="thread counts, e.g. 1,2: edgec --threads N, and onnxruntime with N "
                         "intra-op threads")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows = {t: [] for t in threads}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            path, shape_args = prepare(name, folder)
            binaries, reports = {}, {}
            for t in threads:
                out = folder / f"{name}-auto-{t}"
                reports[t] = edgec_build(path, out, shape_args, "auto", t)
                binaries[t] = out / "model"
            timers = {t: OrtTimer(path, t) for t in threads}
            medians = alternate(binaries, timers, args.runs, args.rounds)
            plain = None
            if not args.no_plain:
                edgec_build(path, folder / f"{name}-none", shape_args, "none", threads[0])
                plain = binary_median_ms(folder / f"{name}-none" / "model",
                                         max(3, args.runs // 4))
            for t in threads:
                mem = reports[t]["memory"]
                ort, ours = medians[t]
                rows[t].append((name, ort, ours, plain if t == threads[0] else None,
                                mem["arena_bytes"], mem["arena_bytes_without_reuse"],
                                reports[t]["kernel_calls_before_fusion"],
                                reports[t]["kernel_calls_after_fusion"]))
            print(f"{name}: done", file=sys.stderr)
    print(f"host, edgec and onnxruntime alternating, median of {args.runs} runs each "
          f"({args.rounds} blocks); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for t in threads:
        print(f"\n{t} thread{'s' if t > 1 else ''}")
        print(f"{'model':<14}{'ORT ms':>9}{'edgec ms':>10}{'edgec/ORT':>10}{'plain ms':>10}"
              f"{'plain/edgec':>12}{'arena KiB':>11}{'no-reuse KiB':>13}{'calls':>11}")
        for name, ort, ours, plain, arena, noreuse, before, after in rows[t]:
            plain_s = f"{plain:10.2f}{plain / ours:12.1f}" if plain else f"{'-':>10}{'-':>12}"
            print(f"{name:<14}{ort:9.3f}{ours:10.3f}{ours / ort:10.2f}{plain_s}"
                  f"{arena / 1024:11.0f}{noreuse / 1024:13.0f}{before:>6}->{after:<4}")
        ratios = [ours / ort for _, ort, ours, *_ in rows[t]]
        print(f"{'geomean':<14}{'':>9}{'':>10}{geomean(ratios):10.2f}   over {len(ratios)} "
              f"model{'s' if len(ratios) > 1 else ''}")


if __name__ == "__main__":
    main()
