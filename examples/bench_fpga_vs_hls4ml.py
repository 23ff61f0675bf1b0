"""edgec's FPGA backend vs plain hls4ml (its default configuration) on the zoo MLP 16-64-32-32-5.

    python examples/bench_fpga_vs_hls4ml.py [--target fpga-xcu250] [--no-rtl] [--json out.json]

Rows:
- hls4ml default: the trained PyTorch model through ``convert_from_pytorch_model`` with
  ``config_from_pytorch_model`` defaults (ap_fixed<16,6> everywhere, truncation, wrap-around,
  Latency strategy, reuse factor 1), compiled and run on the test set.
- edgec 16-bit: ``edgec compress mlp16`` (float ONNX) -> ``edgec compile`` (per-layer types,
  exact accumulators, rounding and saturation) -> ``edgec simulate``.
- edgec 8-bit: ``--quantize fixed<8,3>`` (QDQ, power-of-two scales), and the same with 50%
  pruning; the RTL (da4ml + Verilator) is simulated and checked bit for bit.

Agreement is argmax agreement with onnxruntime on the float model (for edgec rows: on the ONNX
that was compiled, the contract 'edgec simulate' checks; the float agreement is shown too).
Resources and latency of the HLS designs are edgec's ESTIMATES from hls4ml's template rules
(no vendor tool here), applied alike to both flows; the RTL rows' cycles are simulated.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def edgec(*argv: str) -> None:
    from toolchain.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    if rc != 0:
        sys.exit(f"edgec {' '.join(argv)} failed ({rc})")


def ort_float(model_path: Path, x: np.ndarray) -> np.ndarray:
    from toolchain.targets.fpga.simulate import reference_outputs

    return reference_outputs(model_path, x, 1)


def plain_hls4ml(work: Path, target: str, x: np.ndarray) -> dict:
    """hls4ml with its defaults on the trained torch model; estimate with edgec's rules."""
    import hls4ml

    from toolchain import models
    from toolchain.onnx_io import fix_input_shapes, load_model
    from toolchain.targets import device
    from toolchain.targets.fpga import config as fcfg
    from toolchain.targets.fpga.estimate import estimate, utilization
    from toolchain.targets.fpga.plan import assign_types
    from toolchain.targets.fpga.lower import lower
    from toolchain.targets.fpga.precision import Fixed, accumulator

    dev = fcfg.FpgaDevice.from_device(device(target))
    model = models.trained("mlp16")
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        conf = hls4ml.utils.config_from_pytorch_model(model, input_shape=(16,), backend="Vitis")
        hm = hls4ml.converters.convert_from_pytorch_model(
            model, output_dir=str(work / "hls4ml_default"), backend="Vitis", part=dev.part,
            clock_period=dev.clock_period_ns, io_type="io_parallel", hls_config=conf)
        hm.compile()
        y = np.asarray(hm.predict(np.ascontiguousarray(x.astype(np.float32))))
    seconds = time.perf_counter() - started
    # The same estimator, on the design hls4ml's defaults describe: every type ap_fixed<16,6>
    onnx_path = work / "mlp16.onnx"
    graph = lower(fix_input_shapes(load_model(onnx_path), {"input": (1, 16)}), target)
    cfg = fcfg.FpgaConfig(clock_period_ns=dev.clock_period_ns)
    design = assign_types(graph, cfg)
    default = Fixed(16, 6, rounding="TRN", saturation="WRAP")
    design.input_type = default
    for p in design.layers:
        p.input_type = default
        p.result_type = default
        if p.has_weights:
            p.weight_type = p.bias_type = p.accum_type = default
    est = estimate(design, "latency", dev.clock_period_ns)
    # Which layers' accumulators (ap_fixed<16,6>, wrap-around) can overflow for some input?
    overflow = [p.name for p in design.weighted()
                if accumulator(default, default, default, p.layer.weight, p.layer.bias).integer
                > default.integer]
    return {"y": y.reshape(len(x), -1), "estimate": est.to_json(), "overflow": overflow,
            "fits": utilization(est.totals(), dev.totals())["fits"], "seconds": seconds,
            "types": "ap_fixed<16,6> (TRN, WRAP) everywhere"}


def edgec_row(work: Path, name: str, compress: list[str], target: str, rtl: bool) -> dict:
    onnx_path = work / f"{name}.onnx"
    out = work / f"{name}-fpga"
    edgec("compress", "mlp16", *compress, "-o", str(onnx_path))
    started = time.perf_counter()
    edgec("compile", str(onnx_path), "--input-shape", "input=1,16", "--target", target,
          "-o", str(out))
    compile_s = time.perf_counter() - started
    sim_args = ["simulate", str(out), "--dataset", "mlp16"] + ([] if rtl else ["--no-rtl"])
    edgec(*sim_args)
    report = json.loads((out / "report.json").read_text())
    sim = json.loads((out / "simulation.json").read_text())
    return {"report": report, "sim": sim, "compile_seconds": compile_s, "out": out,
            "onnx": onnx_path}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="fpga-xcu250")
    ap.add_argument("--no-rtl", action="store_true", help="skip the Verilator runs (faster)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()

    from toolchain import models
    from toolchain.targets.fpga.hls import CEmulation

    _, _, x, labels = models.dataset("mlp16")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_fpga_") as tmp:
        work = Path(tmp)
        flows = [("edgec 16-bit", "mlp16", []),
                 ("edgec 8-bit", "mlp16_q8", ["--quantize", "fixed<8,3>"]),
                 ("edgec 8-bit 50% pruned", "mlp16_p50_q8",
                  ["--prune", "0.5", "--quantize", "fixed<8,3>"])]
        results = {name: edgec_row(work, key, flags, args.target, not args.no_rtl)
                   for name, key, flags in flows}
        y_float = ort_float(work / "mlp16.onnx", x)
        plain = plain_hls4ml(work, args.target, x)
        agree_float = float(np.mean(plain["y"].argmax(1) == y_float.argmax(1)))
        est = plain["estimate"]
        rows.append({"flow": "hls4ml default", "bits": 16, "agreement": agree_float,
                     "agreement_float": agree_float,
                     "accuracy": float(np.mean(plain["y"].argmax(1) == labels)),
                     "reference_accuracy": float(np.mean(y_float.argmax(1) == labels)),
                     **est["resources"], "cycles": est["latency_cycles"],
                     "ns": est["latency_ns"], "rtl_cycles": None, "rtl_bit_exact": None,
                     "fits": plain["fits"], "accumulators_can_overflow": plain["overflow"]})
        for name, r in results.items():
            c = r["sim"]["c_emulation"]
            rep = r["report"]
            y_c = CEmulation(r["out"] / "hls", rep["hls"]).predict(x)
            rtl = r["sim"].get("rtl", {})
            rows.append({"flow": name, "bits": 16 if name.endswith("16-bit") else 8,
                         "agreement": c["argmax_agreement"],
                         "agreement_float": float(np.mean(y_c.argmax(1) == y_float.argmax(1))),
                         "accuracy": c["accuracy"], "reference_accuracy": c["reference_accuracy"],
                         **rep["estimate"]["resources"], "cycles": rep["estimate"]["latency_cycles"],
                         "ns": rep["estimate"]["latency_ns"],
                         "rtl_cycles": rtl.get("latency_cycles") if rtl.get("ran") else None,
                         "rtl_luts": rtl.get("lut_estimate") if rtl.get("ran") else None,
                         "rtl_bit_exact": rtl.get("bit_exact") if rtl.get("ran") else None,
                         "fits": rep["utilization"]["fits"]})

    print(f"MLP 16-64-32-32-5 (zoo mlp16), {len(x)} test samples, target {args.target}; "
          "DSP/LUT/FF/cycles are estimates from hls4ml's template rules")
    head = (f"{'flow':<24}{'bits':>5}{'agree':>8}{'agr.flt':>8}{'acc':>7}{'ref':>7}{'DSP':>7}"
            f"{'LUT':>9}{'FF':>9}{'cyc':>5}{'ns':>7}{'RTL cyc':>8}{'RTL LUT':>9}{'exact':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['flow']:<24}{r['bits']:>5}{100 * r['agreement']:>7.1f}%"
              f"{100 * r['agreement_float']:>7.1f}%{100 * r['accuracy']:>6.1f}%"
              f"{100 * r['reference_accuracy']:>6.1f}%{r['dsp']:>7}{r['lut']:>9}{r['ff']:>9}"
              f"{r['cycles']:>5}{r['ns']:>7.0f}{r['rtl_cycles'] if r['rtl_cycles'] else '-':>8}"
              f"{r.get('rtl_luts') or '-':>9}"
              f"{'-' if r['rtl_bit_exact'] is None else ('yes' if r['rtl_bit_exact'] else 'NO'):>7}")
    plain_row = rows[0]
    print(f"hls4ml default: accumulators that can overflow (wrap) for some input: "
          f"{len(plain_row['accumulators_can_overflow'])} of 4 dense layers "
          f"{plain_row['accumulators_can_overflow']}; edgec sizes every accumulator so none can")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
