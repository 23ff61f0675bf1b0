"""``edgec simulate OUT/`` for FPGA folders: C emulation, RTL simulation, estimates, fit."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from toolchain.errors import ConfigError, ToolMissingError
from toolchain.onnx_io import fix_input_shapes, load_model
from toolchain.reference import ort_session
from toolchain.targets.registry import device as find_device

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 1000


def _test_set(args: argparse.Namespace, in_shape: list[int]):
    """(X, labels or None, where they came from)."""
    feature_shape = tuple(in_shape[1:])
    if getattr(args, "test_data", None):
        try:
            x = np.load(args.test_data, allow_pickle=False)
            y = np.load(args.test_labels, allow_pickle=False) if args.test_labels else None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the test set: {exc}") from None
        source = str(args.test_data)
    elif getattr(args, "dataset", None):
        try:
            from toolchain import models
        except ImportError:
            raise ConfigError("--dataset needs the model zoo (toolchain.models)") from None
        try:
            _, _, x, y = models.dataset(args.dataset)
        except KeyError:
            raise ConfigError(f"unknown --dataset '{args.dataset}'; zoo models: "
                              + ", ".join(models.names())) from None
        source = f"zoo:{args.dataset}"
    else:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((DEFAULT_SAMPLES,) + feature_shape)
        y, source = None, "seeded random (no labels)"
    x = np.asarray(x, dtype=np.float32)
    if int(np.prod(x.shape[1:])) != int(np.prod(feature_shape)):
        raise ConfigError(f"test inputs have shape {x.shape[1:]}, the model expects "
                          f"{feature_shape}")
    x = x.reshape((x.shape[0],) + feature_shape)
    n = getattr(args, "samples", None)
    if n is not None:
        if n < 1:
            raise ConfigError(f"invalid --samples {n}: expected a positive integer")
        x = x[:n]
        y = y[:n] if y is not None else None
    return x, (np.asarray(y).reshape(-1) if y is not None else None), source


def reference_outputs(model_path: Path, x: np.ndarray, batch: int) -> np.ndarray:
    sess = ort_session(model_path)
    name = sess.get_inputs()[0].name
    outs = []
    for i in range(0, x.shape[0], batch):
        chunk = x[i:i + batch]
        if chunk.shape[0] != batch:  # a static batch: pad the last chunk
            pad = np.zeros((batch - chunk.shape[0],) + chunk.shape[1:], dtype=chunk.dtype)
            outs.append(sess.run(None, {name: np.concatenate([chunk, pad])})[0][:chunk.shape[0]])
        else:
            outs.append(sess.run(None, {name: chunk})[0])
    out = np.concatenate(outs)
    return out.reshape(out.shape[0], -1).astype(np.float64)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def simulate_folder(out_dir: Path, report: dict, args) -> dict:
    """``args``: the simulate options (``FpgaSimulateOptions``)."""
    from .backend import folder_config, plan_design
    from .hls import CEmulation

    manifest = json.loads((out_dir / "edgec.json").read_text())
    spec = manifest["inputs"][0]
    x, labels, source = _test_set(args, spec["shape"])
    started = time.perf_counter()
    emu = CEmulation(out_dir / "hls", report["hls"])
    y_c = emu.predict(x, desc="C emulation")
    c_seconds = time.perf_counter() - started
    y_ref = reference_outputs(out_dir / "model.onnx", x, int(spec["shape"][0]))
    err = np.abs(y_c - y_ref)
    span = float(y_ref.max() - y_ref.min()) or 1.0
    c_emulation = {
        "samples": int(x.shape[0]), "test_set": source,
        "argmax_agreement": _agreement(y_c, y_ref),
        "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
        "max_error_of_range": float(err.max() / span),
        "seconds": round(c_seconds, 3),
    }
    if labels is not None:
        c_emulation["accuracy"] = float(np.mean(y_c.argmax(axis=1) == labels))
        c_emulation["reference_accuracy"] = float(np.mean(y_ref.argmax(axis=1) == labels))
    result = {"family": "fpga", "target": report["device"]["name"], "c_emulation": c_emulation,
              "estimate": report["estimate"], "utilization": report["utilization"]}

    rtl_info = report.get("rtl", {})
    if getattr(args, "no_rtl", False):
        result["rtl"] = {"ran": False, "reason": "--no-rtl"}
    elif not rtl_info.get("available"):
        result["rtl"] = {"ran": False, "reason": rtl_info.get("reason", "not available")}
    else:
        dev = find_device(report["device"]["name"])
        cfg = folder_config(manifest, dev)  # the options it was compiled with
        model = fix_input_shapes(load_model(out_dir / "model.onnx"),
                                 {spec["name"]: tuple(spec["shape"])})
        reuse = {l["name"]: l["reuse_factor"] for l in report["layers"] if "reuse_factor" in l}
        design = plan_design(model, dev, cfg, reuse)
        try:
            result["rtl"] = _simulate_rtl(design, out_dir, cfg.clock_period_ns,
                                          report["device"]["part"], x, emu)
        except ToolMissingError as exc:
            result["rtl"] = {"ran": False, "reason": str(exc)}
    return result


def _simulate_rtl(design, out_dir: Path, clock_ns: float, part: str, x: np.ndarray,
                  emu) -> dict:
    """Trace and write the RTL, build it with Verilator (unless too large), run ``x`` through
    it and compare with the C emulation's trace of the same layer."""
    from . import rtl

    t0 = time.perf_counter()
    model_rtl, summary = rtl.write(design, out_dir / "rtl", clock_ns, part)
    t1 = time.perf_counter()
    refused = rtl.too_large_to_build(summary)
    if refused:
        return {"ran": False, "reason": refused, **summary, "trace_seconds": round(t1 - t0, 2)}
    rtl.verilate(model_rtl, out_dir / "rtl")
    t2 = time.perf_counter()
    y_rtl = rtl.run(model_rtl, design.input_type.cast(x.reshape(x.shape[0], -1)))
    t3 = time.perf_counter()
    y_trace = emu.trace(x)[summary["compared_layer"]]
    mismatched = int(np.sum(y_rtl != y_trace))
    return {"ran": True, "simulator": f"verilator {rtl.VERILATOR_VERSION} (da4ml "
                                      f"{rtl.DA4ML_VERSION} Verilog in rtl/)",
            "samples": int(x.shape[0]), "bit_exact": mismatched == 0,
            "mismatched_values": mismatched, **summary,
            "seconds": round(t3 - t0, 2), "trace_seconds": round(t1 - t0, 2),
            "build_seconds": round(t2 - t1, 2), "run_seconds": round(t3 - t2, 2)}
