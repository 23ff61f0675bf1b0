"""Per-layer ESTIMATES of cycles, II, DSPs, LUTs, FFs and BRAM from hls4ml's template rules.

No vendor tool runs here, so these numbers are a model, labelled ``"estimate"`` everywhere
they appear; README.md documents the rules and their calibration. The rules (FACTS.md):

- Latency strategy (and Resource with RF 1, whose weights stay constants): II = reuse factor,
  at most ceil(n_in*n_out/RF) multipliers minus zero weights. HLS specializes each product on
  its constant: a power of two is a shift, two CSD digits are one adder, three or more take a
  DSP when both operands have >= 11 bits (two beyond the DSP48's 27x18 ports), else LUTs.
  Cycles are the register stages of the multiply + adder-tree path at the clock period.
- Resource strategy with RF > 1: weights in BRAM, ceil(n_in*n_out/RF) DSP multipliers, zeros
  not removed, the layer loops RF times.
- io_stream: image layers take one input pixel per cycle; the design is a dataflow whose
  layers are joined by FIFOs (hls4ml's depth: one entry per pixel). The HLS tools split a
  stream of channel arrays into one FIFO per channel (the published Vivado HLS report of the
  tutorial CNN lists them so); each is bound to shift registers (SRL) or BRAM18: Vivado HLS
  uses SRLs up to 32 entries (one SRLC32E per bit; the report's 16-deep FIFOs are SRLs, its
  36-deep ones BRAM), Vitis HLS up to 1024 bits or 2 entries (UG1399, config_storage).
- Distributed arithmetic: no DSPs; LUTs and latency come from da4ml's solution (see rtl.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .plan import Design, PlannedLayer

DSP_MIN_BITS = 11  # narrower constant products are mapped to LUTs
DSP_MIN_DIGITS = 3  # constants with fewer CSD digits are shift-and-add: one adder, no DSP
MULT_NS = 3.0  # a 16x16 product (DSP48 or LUTs), as the HLS reports of small designs show
ADDERS_PER_CYCLE_AT_5NS = 3  # adder-tree levels that fit in a 5 ns cycle (UltraScale+)
STREAM_DEPTH = 3  # cycles an io_stream layer adds to its pixel loop (read, compute, write)
BRAM18_BITS = 18 * 1024
# Vitis HLS's defaults for binding FIFOs (UG1399, config_storage): SRL up to these sizes
AUTO_SRL_MAX_BITS = 1024
AUTO_SRL_MAX_DEPTH = 2
SRL_ENTRIES_PER_LUT = 32  # SRLC32E; Vivado HLS keeps FIFOs this shallow in SRLs
# BRAM18 aspect ratios: (max depth, width) per block
BRAM18_SHAPES = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))
IMAGE_KINDS = ("conv2d", "maxpool2d", "avgpool2d", "relu")


@dataclass(frozen=True)
class LayerEstimate:
    name: str
    kind: str
    strategy: str
    reuse_factor: int
    cycles: int
    ii: int
    multipliers: int
    dsp: int
    lut: int
    ff: int
    bram18: int
    source: str = "estimate"

    def to_json(self) -> dict:
        return asdict(self)


def _csd_digits(values: np.ndarray, frac: int) -> np.ndarray:
    """Non-zero digits in the canonical signed-digit form of each fixed-point integer."""
    ints = np.abs(np.round(values * 2.0 ** frac)).astype(np.int64)
    digits = np.zeros(ints.shape, dtype=np.int64)
    n = ints.copy()
    while np.any(n):
        odd = (n & 1) == 1
        # a run of ones (n % 4 == 3) becomes +1 at the top and -1 at the bottom
        take = np.where(odd, np.where((n & 3) == 3, -1, 1), 0)
        digits += odd
        n = (n - take) >> 1
    return digits


def _adder_levels(terms: int) -> int:
    return math.ceil(math.log2(terms)) if terms > 1 else 0


def _adder_cycles(terms: int, clock_ns: float) -> int:
    per_cycle = max(1, round(ADDERS_PER_CYCLE_AT_5NS * clock_ns / 5.0))
    return math.ceil(_adder_levels(terms) / per_cycle)


def _depth(terms: int, clock_ns: float, multiply: bool = True) -> int:
    """Register stages of one multiply (if any) and an adder tree over ``terms`` inputs: the
    path's delay in whole clock periods (a path that fits in one period needs no register)."""
    add_ns = 5.0 / ADDERS_PER_CYCLE_AT_5NS
    return int((MULT_NS * multiply + _adder_levels(terms) * add_ns) // clock_ns)


def _pixels(shape: tuple[int, ...]) -> int:
    """Pixels of a (C, H, W) or (C, W) tensor; 1 for a vector."""
    return int(np.prod(shape[1:])) if len(shape) >= 2 else 1


def _elementwise(p: PlannedLayer, clock_ns: float, io_type: str) -> LayerEstimate:
    kind, n = p.layer.kind, int(np.prod(p.layer.out_shape))
    width = p.input_type.width
    if kind == "softmax":
        # exp and 1/sum tables (1024 x 18 bits each) and one multiplier per output
        return LayerEstimate(p.name, kind, "-", 1, 3 + _adder_cycles(n, clock_ns), 1, n,
                             n, 40 * n, 36 * n, 2)
    if kind == "flatten":
        return LayerEstimate(p.name, kind, "-", 1, 0, 1, 0, 0, 0, 0, 0)
    if kind in ("maxpool2d", "avgpool2d"):
        # nnet_pooling.h: each output reduces its window with window-1 two-input operations;
        # max = a comparator on the carry chain plus a W-bit select (2W LUTs), average = an
        # adder as wide as the sum (W + log2 window); the division by a power of two is wiring
        window = int(np.prod(p.layer.attrs["kernel"]))
        per_op = 2 * width if kind == "maxpool2d" else width + math.ceil(math.log2(window))
        lut = n * (window - 1) * per_op
        depth = _depth(window, clock_ns, multiply=False)
    elif kind == "concat":  # wiring
        lut, depth = 0, 0
    elif kind == "add":  # one adder as wide as the sum per value (nnet_merge.h)
        lut, depth = n * p.result_type.width, 0
    elif kind in ("relu6", "relu1"):  # a sign test, a compare with the top and a select
        lut, depth = n * width, 0
    else:  # relu: a sign test and a W-bit select per value
        lut, depth = n * max(width // 2, 1), 0
    cycles, ii = depth, 1
    if io_type == "io_stream" and len(p.layer.in_shape) >= 2:
        # nnet_pooling_stream.h / nnet_activation_stream.h: one input pixel per cycle
        ii = _pixels(p.layer.in_shape)
        cycles = ii + STREAM_DEPTH - (kind == "relu")
    # combinational layers register nothing in io_parallel; io_stream keeps a line buffer
    ff = 0 if io_type == "io_parallel" else width * _pixels(p.layer.in_shape) // 8
    return LayerEstimate(p.name, kind, "-", 1, int(cycles), int(ii), 0, 0, int(lut), int(ff), 0)


def estimate_layer(p: PlannedLayer, strategy: str, clock_ns: float,
                   io_type: str = "io_parallel") -> LayerEstimate:
    kind = p.layer.kind
    if not p.has_weights:
        return _elementwise(p, clock_ns, io_type)
    rf = p.reuse_factor
    w = p.quantized_weight()
    n_out, fan_in = p.layer.n_out, p.layer.fan_in
    w2 = w.reshape(n_out, fan_in)
    bx, bw, acc = p.input_type.width, p.weight_type.width, p.accum_type.width
    nonzero = w2 != 0
    digits = _csd_digits(w2, p.weight_type.frac)
    dsp_each = 2 if max(bx, bw) > 27 or min(bx, bw) > 18 else 1
    on_dsp = min(bx, bw) >= DSP_MIN_BITS
    if strategy == "resource" and rf > 1:
        # nnet_dense_resource.h: weights in a ROM read by the reuse loop, so HLS sees no
        # constants: every slot is a full multiplier, zeros included
        mults = math.ceil(fan_in * n_out / rf)
        dsp = mults * dsp_each if on_dsp else 0
        lut_mults = 0 if dsp else mults
        lut_mult = lut_mults * bx * bw // 2
        bram18 = max(math.ceil(fan_in * n_out * bw / BRAM18_BITS), math.ceil(mults * bw / 36))
        adds = mults
        depth = 3 + _adder_cycles(math.ceil(fan_in / rf), clock_ns)
    else:
        # Latency strategy, and Resource with RF 1 (its single reuse iteration leaves the
        # weights as constants): HLS specializes every product on its constant. Zeros vanish,
        # powers of two are shifts, constants with 2 CSD digits are one adder; wider constants
        # take a DSP when both operands are wide enough, else a shift-and-add tree in LUTs.
        real = nonzero & (digits >= 2)
        wide = real & (digits >= DSP_MIN_DIGITS)
        mults = math.ceil(int(real.sum()) / rf)
        dsp = math.ceil(int(wide.sum()) / rf) * dsp_each if on_dsp else 0
        in_luts = real & ~wide if on_dsp else real
        lut_mults = math.ceil(int(in_luts.sum()) / rf)
        lut_mult = math.ceil(int((digits[in_luts] - 1).sum()) * (bx + 2) / rf)
        bram18 = 0
        adds = math.ceil(int(nonzero.sum()) / rf)
        per_out = int(nonzero.sum(axis=1).max()) if nonzero.size else 0
        depth = _depth(math.ceil(per_out / rf), clock_ns, multiply=bool(real.any()))
    lut_add = adds * acc
    # DSP48s hold their own pipeline registers; fabric registers sit at stage boundaries
    ff = (adds * acc // 2 + n_out * acc + lut_mults * (bx + bw)) if depth else 0
    # io_parallel: one output pixel per II (parallelization factor 1); io_stream: the line
    # buffer takes one input pixel per II (nnet_conv2d_stream.h)
    pixels = _pixels(p.layer.out_shape) if kind != "dense" else 1
    ii = rf * pixels
    cycles = ii - 1 + depth
    if io_type == "io_stream" and kind != "dense":
        ii = rf * _pixels(p.layer.in_shape)
        cycles = ii + max(depth, STREAM_DEPTH)
    return LayerEstimate(p.name, kind, strategy, rf, int(cycles), int(ii), int(mults), int(dsp),
                         int(lut_mult + lut_add), int(ff), int(bram18))


@dataclass(frozen=True)
class FifoEstimate:
    """One io_stream stream between two layers: ``channels`` FIFOs of ``depth`` x ``bits``."""
    stream: str
    depth: int
    channels: int
    bits: int
    impl: str  # "srl" or "bram18" (each channel's FIFO)
    lut: int  # totals over the channels
    ff: int
    bram18: int
    source: str = "estimate"

    @property
    def width(self) -> int:
        """Bits of one stream word (all channels), as the STREAM pragma's type has them."""
        return self.channels * self.bits

    def to_json(self) -> dict:
        return {**asdict(self), "width": self.width}


def _bram18_blocks(depth: int, width: int) -> int:
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in BRAM18_SHAPES)


def fifo_for(stream: str, depth: int, channels: int, bits: int,
             hls_backend: str = "vitis") -> FifoEstimate:
    """``channels`` FIFOs of ``depth`` entries of ``bits``, bound as the HLS tool does by
    default. Control: read/write address counters and full/empty flags around the data."""
    addr = max(1, math.ceil(math.log2(depth + 1)))
    if hls_backend.lower().startswith("vivado"):
        srl = depth <= SRL_ENTRIES_PER_LUT
    else:
        srl = depth <= AUTO_SRL_MAX_DEPTH or depth * bits <= AUTO_SRL_MAX_BITS
    if srl:
        lut = bits * math.ceil(depth / SRL_ENTRIES_PER_LUT) + 2 * addr + 10
        return FifoEstimate(stream, depth, channels, bits, "srl", channels * lut,
                            channels * max(5, addr + 2), 0)
    return FifoEstimate(stream, depth, channels, bits, "bram18", channels * (2 * addr + 10),
                        channels * (3 * addr + 19), channels * _bram18_blocks(depth, bits))


def _stream_of(shape: tuple[int, ...]) -> tuple[int, int]:
    """(depth, elements per entry) of hls4ml's stream for a channels-first ``shape``: one
    entry per pixel holding all its channels (depth = size / last dim, channels last)."""
    if len(shape) >= 2:
        return int(np.prod(shape[1:])), shape[0]
    return 1, int(np.prod(shape))


def fifos(design: Design, hls_backend: str = "vitis") -> list[FifoEstimate]:
    """The internal FIFOs of hls4ml's io_stream design for ``design``, in order.

    The top function's input and output are AXI stream ports, not FIFOs. hls4ml adds a
    zero-padding layer (and its FIFO) before each padded convolution, and a transpose before a
    Flatten of an image (back to channels first: entries of W elements, C*H of them); the
    Flatten itself is an alias of that stream. tests/test_fpga_stream.py checks this list
    against the STREAM pragmas of generated projects.
    """
    out = []
    types = {"": design.input_type, **{p.name: p.result_type for p in design.layers}}
    last = len(design.layers) - 1
    for i, p in enumerate(design.layers):
        layer = p.layer
        in_bits = types[layer.inputs[0]].width
        pad = layer.attrs.get("padding", (0,)) if layer.kind in ("conv1d", "conv2d", "dwconv2d") \
            else (0,)
        if any(pad):
            c, *size = layer.in_shape
            padded = int(np.prod([d + 2 * q for d, q in zip(size, pad)]))
            out.append(fifo_for(f"{p.name}_zeropad", padded, c, in_bits, hls_backend))
        if layer.kind == "flatten":
            if len(layer.in_shape) >= 2:  # back to channels first: C*H entries of W values
                c, *rest = layer.in_shape
                out.append(fifo_for(f"{p.name}_transpose", c * int(np.prod(rest[:-1])),
                                    rest[-1], in_bits, hls_backend))
        elif i < last:
            depth, elems = _stream_of(tuple(layer.out_shape))
            out.append(fifo_for(p.name, depth, elems, p.result_type.width, hls_backend))
            # a stream read by k layers: hls4ml's clone layer copies it into k more
            readers = sum(p.name in later.layer.inputs for later in design.layers)
            if readers > 1:
                out.extend(fifo_for(f"{p.name}_cpy{k + 1}", depth, elems, p.result_type.width,
                                    hls_backend) for k in range(readers))
    return out


@dataclass(frozen=True)
class DesignEstimate:
    layers: list[LayerEstimate]
    clock_ns: float
    dataflow: bool = False  # io_stream: layers overlap, connected by FIFOs
    fifos: tuple[FifoEstimate, ...] = ()

    @property
    def cycles(self) -> int:
        if self.dataflow:  # the slowest layer's interval plus every layer's fill depth
            return self.ii + sum(e.cycles - e.ii for e in self.layers if e.cycles > e.ii)
        return sum(e.cycles for e in self.layers)

    @property
    def ii(self) -> int:
        return max((e.ii for e in self.layers), default=1)

    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(e, k) for e in self.layers)
                + sum(getattr(f, k, 0) for f in self.fifos)
                for k in ("dsp", "lut", "ff", "bram18")}

    def to_json(self) -> dict:
        out = {"source": "estimate", "latency_cycles": self.cycles,
               "latency_ns": round(self.cycles * self.clock_ns, 2), "ii_cycles": self.ii,
               "resources": self.totals(), "layers": [e.to_json() for e in self.layers]}
        if self.dataflow:
            out["fifos"] = [f.to_json() for f in self.fifos]
        return out


def estimate(design: Design, strategy: str, clock_ns: float,
             io_type: str = "io_parallel", hls_backend: str = "vitis") -> DesignEstimate:
    stream = io_type == "io_stream"
    return DesignEstimate([estimate_layer(p, strategy, clock_ns, io_type)
                           for p in design.layers], clock_ns, stream,
                          tuple(fifos(design, hls_backend)) if stream else ())


def utilization(totals: dict[str, int], available: dict[str, int]) -> dict:
    """Used, available and percent per resource, and whether everything fits."""
    rows = {}
    for key, avail in available.items():
        used = int(totals.get(key, 0))
        pct = 100.0 * used / avail if avail else (0.0 if used == 0 else math.inf)
        rows[key] = {"used": used, "available": int(avail), "percent": round(pct, 2)}
    return {"resources": rows, "fits": all(r["used"] <= r["available"] for r in rows.values())}
