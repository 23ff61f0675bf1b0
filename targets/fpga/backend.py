"""The FPGA family: ONNX -> planned fixed-point design -> hls4ml project (+ da4ml RTL).

compile: lower the graph, type every tensor, choose reuse factors, estimate and check the fit
(all before anything is written), then write the hls4ml project, build its C emulation and
write the RTL where the design allows. simulate: C emulation vs onnxruntime on a test set, RTL
vs C emulation bit for bit, latency, per-layer estimates and utilization.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from toolchain.errors import ConfigError, ToolMissingError
from toolchain.reports.schema import FpgaReport
from toolchain.targets.registry import Backend, Device, NodeSupport, register_backend

from . import config as fcfg
from .budget import choose_reuse_factors
from .estimate import estimate, utilization
from .lower import lower
from .options import FpgaOptions, FpgaSimulateOptions
from .precision import parse_fixed
from .plan import Design, apply_reuse_factors, assign_types

log = logging.getLogger(__name__)

HLS_DIR = "hls"
RTL_DIR = "rtl"


def plan_design(model, device: Device, cfg: fcfg.FpgaConfig,
                reuse: dict[str, int] | None = None) -> Design:
    """Lower, type and set reuse factors (from ``reuse``, the budget, or the options)."""
    design = assign_types(lower(model, device.name), cfg)
    if reuse is not None:
        for p in design.weighted():
            p.reuse_factor = int(reuse.get(p.name, 1))
    elif cfg.budget is not None:
        choose_reuse_factors(design, cfg.budget[0], cfg.budget[1], cfg.strategy,
                             cfg.clock_period_ns, cfg.io_type, cfg.hls_backend)
    else:
        apply_reuse_factors(design, cfg)
    return design


# 'edgec verify' allows this many steps (LSBs) of the output's fixed-point type. A QDQ design
# computes what onnxruntime computes except on rounding ties (ties-to-even there, half up
# here); a tie that rounds apart inside moves the output by a step or two: the zoo cnn at
# fixed<8,3> differed by at most 2 steps (0.0625) from onnxruntime over 6 seeds.
VERIFY_STEPS = 4
# A float model's design approximates float arithmetic at --default-precision, an error that
# grows with depth rather than with the output's step: it may also differ by this share of
# the output's range (16-bit zoo mlp16: under 1%; an 8-bit residual CNN: 9%, under 1 step).
FLOAT_RELATIVE = 0.05


def _tolerance(design: Design, output: str) -> tuple[float, dict[str, float]]:
    """For 'edgec verify': the allowed error relative to the output's range, and per output
    the allowed absolute error (``VERIFY_STEPS`` steps of its type)."""
    last = design.layers[-1]
    step = VERIFY_STEPS * last.result_type.lsb
    return (0.0 if last.layer.out_type is not None else FLOAT_RELATIVE), {output: step}


def folder_config(manifest: dict, device: Device) -> fcfg.FpgaConfig:
    """The build configuration a folder was compiled with, from the options in its
    edgec.json (validated again, so a hand-edited manifest is a one-line error)."""
    options = FpgaOptions.from_json(manifest.get("options", {}))
    return options.config(fcfg.FpgaDevice.from_device(device))


def config_from_report(report: dict) -> fcfg.FpgaConfig:
    """The resolved configuration report.json records (reuse factors as chosen)."""
    c = report["config"]
    return fcfg.FpgaConfig(c["hls_backend"], c["io_type"], c["strategy"], c["reuse_default"],
                           dict(c["reuse_per_layer"]), None, float(c["clock_period_ns"]),
                           parse_fixed(c["default_precision"]), c["project_name"])


_AP_CHECK = """#include "ap_fixed.h"
int main() { ap_fixed<16, 6> x = 1.5; return (x * 2 == 3) ? 0 : 1; }
"""


_EXACT = (0.0, 0.0)
BASELINE_TOLERANCES = {
    "target": _EXACT, "device.part": _EXACT, "input_type": _EXACT, "config.strategy": _EXACT,
    "layers#": _EXACT, "estimate.latency_cycles": (0.1, 1.0), "estimate.ii_cycles": _EXACT,
    "utilization.fits": _EXACT,
    **{f"utilization.resources.{r}.used": (0.05, 2.0) for r in ("dsp", "lut", "ff", "bram18")},
    "rtl.available": _EXACT,
}


@register_backend
class FpgaBackend(Backend):
    family = "fpga"
    Options = FpgaOptions
    SimulateOptions = FpgaSimulateOptions
    report_class = FpgaReport
    baseline_tolerances = BASELINE_TOLERANCES

    # the report: targets/fpga/report_page.py
    report_page = "toolchain.targets.fpga.report_page"

    def describe(self, device: Device) -> str:
        d = fcfg.FpgaDevice.from_device(device)
        return (f"part {d.part}, {1000 / d.clock_period_ns:.0f} MHz, {d.dsp} DSP, {d.lut} LUT, "
                f"{d.ff} FF, {d.bram36} BRAM36")

    def compiler_argv(self, device: Device, options) -> tuple[str, ...]:
        return ("g++",)  # hls4ml's C emulation

    def support(self, model, device: Device) -> list[NodeSupport]:
        """What the lowering maps (targets/fpga/lower.py), every refused node with its reason;
        nothing is typed, estimated or written. Options (reuse factors, io_type) are judged
        by the compile."""
        from .lower import node_label, refusals

        found, graph = refusals(model, device.name)
        return ([NodeSupport(node_label(n), n.op_type, i not in found, found.get(i, ""), i)
                 for i, n in enumerate(model.graph.node)]
                + [NodeSupport(node, op, False, why) for node, op, why in graph])

    def check_tools(self, device: Device, workdir: Path) -> list[str]:
        """g++ builds a one-line ap_fixed program with hls4ml's headers; Verilator is usable."""
        from toolchain.errors import EdgecError
        from toolchain.tools import require, run_tool

        from . import rtl

        problems = []
        try:
            import hls4ml
        except ImportError:
            return [f"{device.name}: hls4ml is not installed: pip install hls4ml==1.3.0"]
        ap_types = Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"
        (workdir / "ap.cpp").write_text(_AP_CHECK)
        try:
            cxx = require("g++", "apt-get install g++")
            run_tool([cxx, "-std=c++17", f"-I{ap_types}", "ap.cpp", "-o", "ap"], cwd=workdir,
                     what="compiling an ap_fixed program")
            run_tool([workdir / "ap"], what="running an ap_fixed program")
        except EdgecError as exc:
            problems.append(f"{device.name}: {exc}")
        try:
            env = rtl.verilator_env()
            run_tool([Path(env["VERILATOR_ROOT"]) / "bin" / "verilator", "--version"],
                     what="running verilator", env={**env, "PATH": env["PATH"]})
        except EdgecError as exc:
            problems.append(f"{device.name}: {exc}")
        return problems

    # ------------------------------------------------------------------ compile
    def compile(self, model_path: Path, model, device: Device, options: FpgaOptions,
                stage: Path) -> dict:
        from . import hls, rtl

        dev = fcfg.FpgaDevice.from_device(device)
        cfg = options.config(dev)
        design = plan_design(model, device, cfg)
        chosen = estimate(design, "latency" if cfg.strategy == "distributed_arithmetic"
                          else cfg.strategy, cfg.clock_period_ns, cfg.io_type, cfg.hls_backend)
        estimates = {s: estimate(design, s, cfg.clock_period_ns, cfg.io_type,
                                 cfg.hls_backend).to_json()
                     for s in ("latency", "resource")}
        totals = chosen.totals()
        summary_json = chosen.to_json()
        layers, reason = rtl.rtl_layers(design)
        rtl_info: dict = {"available": layers is not None, "reason": reason}
        if layers is not None and cfg.strategy == "distributed_arithmetic":
            # the DA design's size comes from da4ml's solution, so solve it now
            try:
                _, summary = rtl.write(design, stage / RTL_DIR, cfg.clock_period_ns, dev.part)
                rtl_info.update(summary)
            except ToolMissingError as exc:
                rtl_info = {"available": False, "reason": str(exc)}
        if cfg.strategy == "distributed_arithmetic" and "lut_estimate" in rtl_info:
            # a trailing softmax stays an HLS layer beside the da4ml logic
            hls_only = [e for e in chosen.layers if e.name not in rtl_info["rtl_layers"]]
            totals = {"dsp": sum(e.dsp for e in hls_only),
                      "lut": rtl_info["lut_estimate"] + sum(e.lut for e in hls_only),
                      "ff": rtl_info["ff_estimate"] + sum(e.ff for e in hls_only),
                      "bram18": sum(e.bram18 for e in hls_only)}
            cycles = rtl_info["latency_cycles"] + sum(e.cycles for e in hls_only)
            summary_json = {"source": "estimate (da4ml solution; cycles from its pipeline)",
                            "latency_cycles": cycles,
                            "latency_ns": round(cycles * cfg.clock_period_ns, 2),
                            "ii_cycles": 1, "resources": totals,
                            "layers": [e.to_json() for e in hls_only]}
        elif cfg.strategy == "distributed_arithmetic":
            # no da4ml solution for this design: say which rules the numbers come from
            summary_json["source"] = ("estimate (latency-strategy rules: no da4ml solution, "
                                      f"{rtl_info.get('reason') or 'RTL not written'})")
        fit = utilization(totals, dev.totals())
        if not fit["fits"]:
            over = [f"{k.upper()} {r['used']} > {r['available']} ({r['percent']:.0f}%)"
                    for k, r in fit["resources"].items() if r["used"] > r["available"]]
            raise ConfigError(f"the design does not fit {device.name} ({dev.part}): estimated "
                              + ", ".join(over) + "; raise --reuse-factor, set --budget "
                              "dsp=N, quantize/prune the model, or pick a larger device")
        stream_less = [p for p in design.layers if p.layer.kind in ("relu6", "relu1")]
        if cfg.io_type == "io_stream" and stream_less:
            from toolchain.errors import UnsupportedOpError

            raise UnsupportedOpError("Clip", stream_less[0].layer.node, device.name,
                                     f"hls4ml 1.3 has no io_stream {stream_less[0].layer.kind} "
                                     "(nnet_activation_stream.h); use --io-type io_parallel")
        tolerance, steps = _tolerance(design, model.graph.output[0].name)
        info = hls.write_project(design, cfg, dev, stage / HLS_DIR)
        return {
            "family": "fpga", "device": {"name": device.name, "part": dev.part,
                                         "totals": dev.totals()},
            "config": cfg.to_json(),
            "input_type": design.input_type.hls(),
            "layers": [p.to_json() for p in design.layers],
            "estimate": {"strategy": cfg.strategy, **summary_json,
                         "note": "estimate from hls4ml template rules, not synthesis; "
                                 "see targets/fpga/README.md"},
            "estimates_by_strategy": estimates,
            "utilization": {"source": "estimate", **fit},
            "hls": info, "rtl": rtl_info,
            "compression": design.graph.compression,
            "tolerance": tolerance, "output_steps": steps,
        }

    # ------------------------------------------------------------------ run
    def _load(self, out_dir: Path) -> dict:
        path = Path(out_dir) / "report.json"
        if not path.is_file():
            raise ConfigError(f"{out_dir} has no report.json; compile it again")
        return json.loads(path.read_text())

    def run(self, out_dir: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        from .hls import CEmulation

        report = self._load(out_dir)
        emu = CEmulation(Path(out_dir) / HLS_DIR, report["hls"])
        y = emu.predict(inputs[0])
        manifest = json.loads((Path(out_dir) / "edgec.json").read_text())
        shape = manifest["outputs"][0]["shape"]
        return [y.reshape([inputs[0].shape[0]] + list(shape[1:])).astype(np.float32)]

    # ------------------------------------------------------------------ simulate
    def simulate(self, out_dir: Path, options: FpgaSimulateOptions) -> dict:
        from .simulate import simulate_folder

        result = simulate_folder(Path(out_dir), self._load(out_dir), options)
        for line in summary_lines(result):
            print(line)
        return result


def summary_lines(result: dict) -> list[str]:
    """A few lines for the terminal; simulation.json has everything."""
    c = result["c_emulation"]
    acc = (f", accuracy {100 * c['accuracy']:.2f}% (onnxruntime {100 * c['reference_accuracy']:.2f}%)"
           if "accuracy" in c else "")
    lines = [f"C emulation: {c['samples']} samples ({c['test_set']}), argmax agreement "
             f"{100 * c['argmax_agreement']:.2f}% with onnxruntime, max error "
             f"{c['max_abs_error']:.4g}{acc}"]
    rtl = result["rtl"]
    if rtl.get("ran"):
        lines.append(f"RTL (Verilator): {'bit-exact' if rtl['bit_exact'] else 'MISMATCH'} with "
                     f"the C emulation at '{rtl['compared_layer']}' ({rtl['mismatched_values']} "
                     f"values differ), latency {rtl['latency_cycles']} cycles = "
                     f"{rtl['latency_ns']} ns, II {rtl['ii_cycles']}, ~{rtl['lut_estimate']} LUT")
    else:
        lines.append(f"RTL: not simulated ({rtl['reason']})")
    est, fit = result["estimate"], result["utilization"]
    res = ", ".join(f"{k.upper()} {v['used']} ({v['percent']:.1f}%)"
                    for k, v in fit["resources"].items())
    lines.append(f"estimate ({est['strategy']}): {est['latency_cycles']} cycles = "
                 f"{est['latency_ns']} ns, II {est['ii_cycles']}; {res}; "
                 f"{'fits' if fit['fits'] else 'DOES NOT FIT'}")
    return lines


__all__ = ["FpgaBackend", "plan_design", "folder_config", "config_from_report"]
