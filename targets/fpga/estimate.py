"""Per-layer ESTIMATES of cycles, II, DSPs, LUTs, FFs and BRAM from hls4ml's template rules.

No vendor tool runs here, so these numbers are a model, labelled ``"estimate"`` everywhere
they appear; README.md documents the rules and their calibration. The rules (FACTS.md):

- Latency strategy: each dense layer is pipelined with II = reuse factor and at most
  ceil(n_in*n_out/RF) multipliers, minus zero weights. Multiplying by a power of two is a shift
  (no multiplier). A product whose narrower operand has <= 10 bits is built from LUTs (as
  Vivado/Vitis HLS do for constant coefficients); wider ones take a DSP (two when an operand
  exceeds the DSP48's 27x18 ports).
- Resource strategy: weights in BRAM, ceil(n_in*n_out/RF) DSP multipliers, zeros not removed,
  the layer loops RF times.
- Distributed arithmetic: no DSPs; LUTs and latency come from da4ml's solution (see rtl.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .plan import Design, PlannedLayer

DSP_MIN_BITS = 11  # narrower constant products are mapped to LUTs
ADDERS_PER_CYCLE_AT_5NS = 3  # adder-tree levels that fit in a 5 ns cycle (UltraScale+)
BRAM18_BITS = 18 * 1024


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


def _adder_cycles(terms: int, clock_ns: float) -> int:
    levels = math.ceil(math.log2(max(terms, 1))) if terms > 1 else 0
    per_cycle = max(1, round(ADDERS_PER_CYCLE_AT_5NS * clock_ns / 5.0))
    return math.ceil(levels / per_cycle)


def estimate_layer(p: PlannedLayer, strategy: str, clock_ns: float) -> LayerEstimate:
    kind = p.layer.kind
    if kind not in ("dense", "conv2d"):
        n = int(np.prod(p.layer.out_shape))
        if kind == "softmax":
            # exp and 1/sum tables (1024 x 18 bits each) and one multiplier per output
            return LayerEstimate(p.name, kind, "-", 1, 3 + _adder_cycles(n, clock_ns), 1, n,
                                 n, 40 * n, 36 * n, 2)
        if kind in ("flatten",):
            return LayerEstimate(p.name, kind, "-", 1, 0, 1, 0, 0, 0, 0, 0)
        width = p.result_type.width
        return LayerEstimate(p.name, kind, "-", 1, 1, 1, 0, 0, n * max(width // 2, 1),
                             n * width, 0)
    rf = p.reuse_factor
    w = p.quantized_weight()
    n_out, fan_in = p.layer.n_out, p.layer.fan_in
    w2 = w.reshape(n_out, fan_in)
    pixels = int(np.prod(p.layer.out_shape[1:])) if kind == "conv2d" else 1
    bx, bw, acc = p.input_type.width, p.weight_type.width, p.accum_type.width
    nonzero = w2 != 0
    digits = _csd_digits(w2, p.weight_type.frac)
    shifts = nonzero & (digits == 1)  # powers of two: wiring only
    real = nonzero & ~shifts
    dsp_each = 2 if max(bx, bw) > 27 or min(bx, bw) > 18 else 1
    if strategy == "resource":
        mults = math.ceil(fan_in * n_out / rf)
        dsp = mults * dsp_each if min(bx, bw) >= DSP_MIN_BITS else 0
        lut_mult = 0 if dsp else mults * bx * bw // 2
        bram18 = max(math.ceil(fan_in * n_out * bw / BRAM18_BITS),
                     math.ceil(mults * bw / 36)) if rf > 1 else 0
        adds = mults
        cycles = rf + 3 + _adder_cycles(math.ceil(fan_in / rf), clock_ns)
    else:
        nreal = int(real.sum())
        mults = math.ceil(nreal / rf)
        on_dsp = min(bx, bw) >= DSP_MIN_BITS
        dsp = mults * dsp_each if on_dsp else 0
        lut_mult = 0 if on_dsp else math.ceil(
            int(np.maximum(digits[real] - 1, 0).sum()) * (bx + 2) / rf)
        bram18 = 0
        adds = math.ceil(int(nonzero.sum()) / rf)
        per_out = int(nonzero.sum(axis=1).max()) if nonzero.size else 0
        cycles = rf + (2 if on_dsp else 1) + _adder_cycles(math.ceil(per_out / rf), clock_ns)
    lut_add = adds * acc
    ff = adds * acc // 2 + n_out * acc + mults * (bx + bw)
    # io_parallel convolutions compute one output pixel per II (parallelization factor 1)
    ii = rf * pixels
    cycles = cycles + rf * (pixels - 1)
    return LayerEstimate(p.name, kind, strategy, rf, int(cycles), int(ii), int(mults), int(dsp),
                         int(lut_mult + lut_add), int(ff), int(bram18))


@dataclass(frozen=True)
class DesignEstimate:
    layers: list[LayerEstimate]
    clock_ns: float

    @property
    def cycles(self) -> int:
        return sum(e.cycles for e in self.layers)

    @property
    def ii(self) -> int:
        return max((e.ii for e in self.layers), default=1)

    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(e, k) for e in self.layers) for k in ("dsp", "lut", "ff", "bram18")}

    def to_json(self) -> dict:
        return {"source": "estimate", "latency_cycles": self.cycles,
                "latency_ns": round(self.cycles * self.clock_ns, 2), "ii_cycles": self.ii,
                "resources": self.totals(), "layers": [e.to_json() for e in self.layers]}


def estimate(design: Design, strategy: str, clock_ns: float,
             io_type: str = "io_parallel") -> DesignEstimate:
    return DesignEstimate([estimate_layer(p, strategy, clock_ns) for p in design.layers],
                          clock_ns)


def utilization(totals: dict[str, int], available: dict[str, int]) -> dict:
    """Used, available and percent per resource, and whether everything fits."""
    rows = {}
    for key, avail in available.items():
        used = int(totals.get(key, 0))
        pct = 100.0 * used / avail if avail else (0.0 if used == 0 else math.inf)
        rows[key] = {"used": used, "available": int(avail), "percent": round(pct, 2)}
    return {"resources": rows, "fits": all(r["used"] <= r["available"] for r in rows.values())}
