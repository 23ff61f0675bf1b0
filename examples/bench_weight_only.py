"""Weight-only int8/int4 matmuls (language-model decode): edgec against onnxruntime.

Models (seeded, written here in the export form ``MatMul(x, DequantizeLinear(Wq, scale))``):

- ``gemv_512x2048``, ``gemv_2048x512``: one decode-step matmul, x [1, 1, K], with bias;
- ``stack``: a model-like stack, 4 blocks of d=256 (four 256x256 projections, a 256x1024
  and a 1024x256 MLP with ReLU, residual adds), x [1, 1, 256];
- each as ``fp32`` (float weights), ``int8`` (per channel) and ``int4`` (groups of 32), and
  the int8/int4 files again with ``--pipeline cpu-int8-act`` (``-a8``: activations quantized
  to int8 per row at run time: sdot on arm-a76, smull/smlal on arm-a72; the host keeps the
  float kernel, so its -a8 rows equal the plain ones; onnxruntime runs the same int8/int4 file).

Host (``--host``): medians of the edgec binary's ``--bench`` against onnxruntime on the same
file, 1 thread, alternating; onnxruntime with its default (all) graph optimizations (for int4
and int8 that fuses into MatMulNBits) and with basic ones (the exact reference), plus the
weight bytes in the binary (all of them are read once per call).
ARM (``--arm``, targets arm-a72,arm-a76): exact instructions per call under qemu
(examples/armcount, ../shared/armcount/README.md) for edgec and onnxruntime's aarch64 build on
the same file, and edgec int8/int4 against edgec fp32 on the same shape.

    python examples/bench_weight_only.py [--host] [--arm] [--runs 50] [--models gemv_512x2048]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = ("fp32", "int8", "int4", "int8-a8", "int4-a8")
# variant -> (the file's weights, edgec --pipeline); "-a8": int8 activations (cpu-int8-act).
BUILDS = {"fp32": ("fp32", "auto"), "int8": ("int8", "auto"), "int4": ("int4", "auto"),
          "int8-a8": ("int8", "cpu-int8-act"), "int4-a8": ("int4", "cpu-int8-act")}
MODELS = ("gemv_512x2048", "gemv_2048x512", "stack")


def _weight(rng, name: str, k: int, n: int, variant: str, nodes: list, inits: list) -> str:
    """Add the weight of one matmul; return the name of its float [K, N] value."""
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    if variant == "fp32":
        inits.append(numpy_helper.from_array(w, name))
        return name
    if variant == "int8":
        s = np.abs(w).max(axis=0) / 127
        q = np.clip(np.round(w / s), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(q, name + "_q"), numpy_helper.from_array(s, name + "_s")]
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s"], [name],
                                      axis=1))
        return name
    g = 32
    s = (np.abs(w.reshape(k // g, g, n)).max(axis=1) / 7).astype(np.float32)
    q = np.clip(np.round(w / np.repeat(s, g, axis=0)), -8, 7).astype(np.int8)
    inits += [helper.make_tensor(name + "_q", TensorProto.INT4, [k, n], q.reshape(-1).tolist()),
              numpy_helper.from_array(s, name + "_s")]
    nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s"], [name],
                                  axis=0, block_size=g))
    return name


def _linear(rng, x: str, k: int, n: int, variant: str, tag: str, nodes, inits) -> str:
    w = _weight(rng, f"{tag}_w", k, n, variant, nodes, inits)
    inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32) * 0.1,
                                         f"{tag}_b"))
    nodes += [helper.make_node("MatMul", [x, w], [f"{tag}_mm"]),
              helper.make_node("Add", [f"{tag}_mm", f"{tag}_b"], [f"{tag}_y"])]
    return f"{tag}_y"


def make_model(name: str, variant: str) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes: list = []
    inits: list = []
    if name.startswith("gemv_"):
        k, n = (int(v) for v in name[5:].split("x"))
        y = _linear(rng, "x", k, n, variant, "l", nodes, inits)
    else:
        k = n = d = 256
        h = "x"
        for b in range(4):
            for p in "qkvo":  # projections (attention itself is not a weight matmul)
                h2 = _linear(rng, h, d, d, variant, f"b{b}{p}", nodes, inits)
                nodes.append(helper.make_node("Add", [h, h2], [f"b{b}{p}_r"]))
                h = f"b{b}{p}_r"
            up = _linear(rng, h, d, 4 * d, variant, f"b{b}up", nodes, inits)
            nodes.append(helper.make_node("Relu", [up], [f"b{b}act"]))
            down = _linear(rng, f"b{b}act", 4 * d, d, variant, f"b{b}down", nodes, inits)
            nodes.append(helper.make_node("Add", [h, down], [f"b{b}out"]))
            h = f"b{b}out"
        y = h
    nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 1, k])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def weight_bytes_of(model: onnx.ModelProto) -> int:
    """Bytes of the file's weights as stored (int4: half a byte each)."""
    total = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims))
        total += n // 2 if t.data_type == TensorProto.INT4 else n * np.dtype(
            helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return total


class OrtTimer:
    """One onnxruntime session (1 thread) kept for all rounds; ``ms(n)``: mean of n runs."""

    def __init__(self, path: Path, level: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        shape = self.sess.get_inputs()[0].shape
        self.feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        for _ in range(10):
            self.sess.run(None, self.feeds)

    def ms(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.sess.run(None, self.feeds)
        return (time.perf_counter() - t0) * 1e3 / n


def compile_model(path: Path, target: str, out: Path, pipeline: str = "auto") -> dict:
    from toolchain.cli import main as edgec

    if edgec(["--quiet", "compile", str(path), "-t", target, "-o", str(out),
              "--pipeline", pipeline]) != 0:
        raise SystemExit(f"edgec compile {path.name} -t {target} failed")
    from toolchain.commands.build import verify_folder

    rep = json.loads((out / "report.json").read_text())
    # int8 activations: the error grows with depth (24 quantized layers in the stack), so it
    # is reported (max error / output range), not gated; float activations must verify.
    rep["verify_rel_error"] = max(c.max_rel_error for c in verify_folder(out))
    if pipeline != "cpu-int8-act" and rep["verify_rel_error"] > 1e-4:
        raise SystemExit(f"edgec verify {out} failed: {rep['verify_rel_error']:.2e}")
    return rep


def host(models, runs: int, work: Path) -> None:
    from toolchain.targets import device
    from toolchain.targets.cpu.device import CpuDevice
    from toolchain.targets.cpu.runner import bench_binary

    dev = CpuDevice.from_device(device("host"))
    print(f"host ({dev.cpu}), 1 thread, medians of {runs} rounds (edgec --bench 200, "
          "onnxruntime 200 runs per round, its basic-optimization session 2), alternating")
    print(f"{'model':16} {'variant':6} {'edgec us':>9} {'ort us':>8} {'ort-basic':>9} "
          f"{'edgec/ort':>9} {'/basic':>7} {'weight B':>9} {'file B':>9} {'rel err':>8}")
    for name in models:
        for variant in VARIANTS:
            weights, pipeline = BUILDS[variant]
            model = make_model(name, weights)
            path = work / f"{name}_{weights}.onnx"
            onnx.save(model, str(path))
            rep = compile_model(path, "host", work / f"{name}_{variant}_host", pipeline)
            full, basic = OrtTimer(path, "ORT_ENABLE_ALL"), OrtTimer(path, "ORT_ENABLE_BASIC")
            ours, peer, plain = [], [], []
            for _ in range(runs):  # alternating, so both see the same machine load
                ours.append(bench_binary(dev, work / f"{name}_{variant}_host" / "model", 200))
                peer.append(full.ms(200))
                plain.append(basic.ms(2 if weights != "fp32" else 200))
            e, o, b = (statistics.median(v) * 1e3 for v in (ours, peer, plain))
            print(f"{name:16} {variant:6} {e:9.1f} {o:8.1f} {b:9.1f} {e / o:9.2f} {e / b:7.2f} "
                  f"{rep['memory']['weight_bytes']:9d} {weight_bytes_of(model):9d} "
                  f"{rep['verify_rel_error']:8.1e}", flush=True)


def arm(models, targets, work: Path, ort_runs: int) -> None:
    import bench_arm_count as bac

    facts = bac.check_setup(targets)
    cache = bac.OrtCache(bac.CACHE / "ort_counts.json")
    args = argparse.Namespace(mix=False, ort_runs=ort_runs, refresh=False)
    print("ARM: exact instructions per call under qemu (edgec_model_run; onnxruntime aarch64 "
          "run_with_ort_values, 1 thread)")
    print(f"{'model':16} {'target':8} {'variant':6} {'edgec':>10} {'ort':>10} {'edgec/ort':>9} "
          f"{'/fp32':>6} {'MAC/insn':>8} {'weight B':>9} {'max err':>9}  (-a8: rel err)")
    for name in models:
        for target in targets:
            fp32 = None
            for variant in VARIANTS:
                weights, pipeline = BUILDS[variant]
                path = work / f"{name}_{weights}.onnx"
                if not path.exists():
                    onnx.save(make_model(name, weights), str(path))
                if pipeline == "auto":
                    row = bac.measure(f"{name}_{variant}", path, target, facts[target], work,
                                      args, cache)
                else:
                    row = measure_pipeline(bac, name, variant, path, target, facts[target], work,
                                           args, cache, pipeline)
                e, o = row.get("edgec"), row.get("ort")
                if variant == "fp32":
                    fp32 = e
                ratio = f"{e / o:9.2f}" if e and o else f"{'-':>9}"
                rel = f"{e / fp32:6.2f}" if e and fp32 else f"{'-':>6}"
                mpi = f"{row['macs'] / e:8.2f}" if e else f"{'-':>8}"
                print(f"{name:16} {target:8} {variant:6} {e or 0:10.0f} {o or 0:10.0f} {ratio} "
                      f"{rel} {mpi} {row.get('weight_bytes') or 0:9d} "
                      f"{row.get('max_abs_error', float('nan')):9.2e}"
                      + (f"  {row['verify_rel_error']:.1e}" if "verify_rel_error" in row else ""),
                      flush=True)
                for key in ("edgec_error", "ort_error"):
                    if key in row:
                        print(f"    {key}: {row[key]}")


def measure_pipeline(bac, name, variant, path, target, facts, work, args, cache, pipeline):
    """``bench_arm_count.measure`` for a build with ``--pipeline``: edgec's count of that
    build, onnxruntime's of the same file (from the cache when the plain build counted it)."""
    out = work / f"{name}_{variant}-{target}"
    rep = compile_model(path, target, out, pipeline)
    x_npy, x_bin, _ = bac.model_input(path, work)
    e = bac.edgec_count(out, x_bin, False)
    row = {"edgec": e["per_inference"], "macs": bac.armcount.macs(path),
           "verify_rel_error": rep["verify_rel_error"],
           "weight_bytes": rep["memory"]["weight_bytes"],
           "max_abs_error": bac.output_error(out, e["output"], path, x_npy)}
    if facts["triple"].startswith("aarch64"):
        row["ort"] = bac.ort_count(path, x_npy, facts["cpu"], args.ort_runs, False, cache,
                                   False)["per_inference"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", action="store_true")
    ap.add_argument("--arm", action="store_true")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--ort-runs", type=int, default=3, help="onnxruntime runs counted on ARM")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default="arm-a72,arm-a76")
    args = ap.parse_args()
    if not (args.host or args.arm):
        args.host = args.arm = True
    models = args.models.split(",")
    with tempfile.TemporaryDirectory(prefix="edgec-wo-") as tmp:
        if args.host:
            host(models, args.runs, Path(tmp))
        if args.arm:
            arm(models, args.targets.split(","), Path(tmp), args.ort_runs)


if __name__ == "__main__":
    main()
