"""Fixed-point types as hls4ml writes them (``ap_fixed``), and exact numpy emulation of casts.

A type is ``Fixed(width, integer, signed)``; ``integer`` counts the sign bit, as in
``ap_fixed<W,I>``. Casts round to nearest (AP_RND, ties up) and saturate (AP_SAT) by default:
truncation biases outputs at 8 bits (FACTS.md), and da4ml's RTL supports exactly these modes,
which is what makes the RTL bit-exact with the C emulation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from toolchain.errors import ConfigError

_SPEC = re.compile(r"^\s*(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*(\w+)\s*)?(?:,\s*(\w+)\s*)?>\s*$")


@dataclass(frozen=True)
class Fixed:
    """``ap_fixed<width, integer>`` (or ``ap_ufixed`` when not signed)."""

    width: int
    integer: int
    signed: bool = True
    rounding: str = "RND"
    saturation: str = "SAT"

    @property
    def frac(self) -> int:
        return self.width - self.integer

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.frac

    @property
    def max_value(self) -> float:
        return 2.0 ** (self.integer - (1 if self.signed else 0)) - self.lsb

    @property
    def min_value(self) -> float:
        return -(2.0 ** (self.integer - 1)) if self.signed else 0.0

    def hls(self) -> str:
        """The precision string hls4ml's config takes, e.g. ``fixed<16,6,RND,SAT>``."""
        return (f"{'' if self.signed else 'u'}fixed<{self.width},{self.integer},"
                f"{self.rounding},{self.saturation}>")

    def kif(self) -> tuple[int, int, int]:
        """da4ml's (keep sign, integer bits without sign, fractional bits)."""
        k = 1 if self.signed else 0
        return k, self.integer - k, self.frac

    def cast(self, x: np.ndarray) -> np.ndarray:
        """Emulate a C++ cast of ``x`` (float64) to this type."""
        scaled = np.asarray(x, dtype=np.float64) * 2.0 ** self.frac
        if self.rounding == "RND":
            q = np.floor(scaled + 0.5)
        elif self.rounding == "RND_CONV":
            q = np.round(scaled)
        else:
            q = np.floor(scaled)
        lo, hi = self.min_value * 2.0 ** self.frac, self.max_value * 2.0 ** self.frac
        if self.saturation == "SAT":
            q = np.clip(q, lo, hi)
        else:  # wrap around, two's complement
            span = 2.0 ** self.width
            q = np.mod(q - lo, span) + lo
        return q * 2.0 ** -self.frac


def parse_fixed(text: str, option: str = "--default-precision") -> Fixed:
    """Parse ``fixed<16,6>`` / ``ufixed<8,0,RND,SAT>``; a bad string is a ConfigError."""
    m = _SPEC.match(text)
    if not m:
        raise ConfigError(f"bad {option} '{text}': expected fixed<W,I> or ufixed<W,I>, "
                          "e.g. fixed<16,6>")
    unsigned, w, i, rnd, sat = m.groups()
    width, integer = int(w), int(i)
    if not 2 <= width <= 64:
        raise ConfigError(f"bad {option} '{text}': the width must be between 2 and 64 bits")
    rnd = (rnd or "RND").upper()
    sat = (sat or "SAT").upper()
    if rnd not in ("RND", "RND_CONV", "TRN") or sat not in ("SAT", "WRAP"):
        raise ConfigError(f"bad {option} '{text}': rounding must be RND, RND_CONV or TRN "
                          "and overflow SAT or WRAP")
    return Fixed(width, integer, not unsigned, rnd, sat)


def integer_bits_for(max_abs: float, signed: bool = True) -> int:
    """Fewest integer bits (sign included when signed) that hold ``max_abs`` without overflow."""
    if max_abs <= 0:
        return 1 if signed else 0
    bits = math.floor(math.log2(max_abs)) + 1
    return bits + (1 if signed else 0)


def fit_values(values: np.ndarray, width: int) -> Fixed:
    """A ``width``-bit signed type whose integer part just holds ``values`` (for float weights)."""
    max_abs = float(np.abs(values).max()) if values.size else 0.0
    return Fixed(width, integer_bits_for(max_abs))


def exact_type_of(values: np.ndarray) -> Fixed | None:
    """The narrowest signed type holding ``values`` exactly, if they lie on a grid of <= 32 bits."""
    v = np.asarray(values, dtype=np.float64)
    nz = v[v != 0]
    if nz.size == 0:
        return Fixed(2, 1)
    for frac in range(-8, 33):
        scaled = nz * 2.0 ** frac
        if np.all(scaled == np.round(scaled)):
            integer = integer_bits_for(float(np.abs(v).max()))
            width = integer + frac
            if width <= 32:
                return Fixed(max(width, 2), integer if width >= 2 else 2 - frac)
            return None
    return None


def accumulator(x: Fixed, weight: Fixed, bias: Fixed | None, weights: np.ndarray,
                bias_values: np.ndarray | None) -> Fixed:
    """An accumulator that can neither overflow nor round for any input of type ``x``.

    ``weights`` has shape (n_out, fan_in). The fractional bits are those of the exact product;
    the integer bits cover the largest |sum_j w_ij x_j + b_i| over all representable x.
    """
    frac = x.frac + weight.frac
    if bias is not None:
        frac = max(frac, bias.frac)
    x_abs = max(abs(x.min_value), abs(x.max_value))
    w = np.abs(weight.cast(weights)).reshape(weights.shape[0], -1).sum(axis=1)
    b = np.abs(bias.cast(bias_values)) if bias is not None and bias_values is not None else 0.0
    bound = float(np.max(w * x_abs + b)) if w.size else 0.0
    integer = integer_bits_for(bound + 2.0 ** -frac)
    return Fixed(integer + frac, integer)
