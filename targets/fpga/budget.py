"""Pick valid reuse factors per layer so that the estimated design meets a budget.

``dsp=N`` / ``lut=N``: start fully parallel (RF 1) and raise the reuse factor of the layer that
uses most of the budgeted resource until the total fits. ``latency=C``: start from the largest
valid reuse factors and lower the slowest layer's until the total latency is within C cycles.
"""

from __future__ import annotations

from toolchain.errors import ConfigError

from .estimate import estimate, estimate_layer
from .plan import Design, valid_reuse_factors


def choose_reuse_factors(design: Design, kind: str, limit: float, strategy: str,
                         clock_ns: float, io_type: str = "io_parallel",
                         hls_backend: str = "vitis") -> None:
    layers = design.weighted()
    valid = {p.name: valid_reuse_factors(p.layer.fan_in, p.layer.n_out) for p in layers}
    # keep the search short: reuse factors beyond 1024 are not useful for these designs
    valid = {k: [rf for rf in v if rf <= 1024] or v[:1] for k, v in valid.items()}
    others = [p for p in design.layers if not p.has_weights]

    def cost(p) -> float:
        e = estimate_layer(p, strategy, clock_ns, io_type)
        return float(e.cycles if kind == "latency" else getattr(e, kind))

    def total() -> float:
        # the design's own total: io_stream layers overlap and its FIFOs count too
        whole = estimate(design, strategy, clock_ns, io_type, hls_backend)
        return float(whole.cycles if kind == "latency" else whole.totals()[kind])

    if kind in ("dsp", "lut"):
        for p in layers:
            p.reuse_factor = valid[p.name][0]
        while total() > limit:
            movable = [p for p in layers if p.reuse_factor != valid[p.name][-1]]
            if not movable:
                raise ConfigError(f"--budget {kind}={limit:g} cannot be met: even the largest "
                                  f"valid reuse factors need {total():.0f} {kind.upper()}")
            worst = max(movable, key=cost)
            i = valid[worst.name].index(worst.reuse_factor)
            worst.reuse_factor = valid[worst.name][i + 1]
    else:
        for p in layers:
            p.reuse_factor = valid[p.name][-1]
        while total() > limit:
            movable = [p for p in layers if p.reuse_factor != valid[p.name][0]]
            if not movable:
                fixed = sum(cost(p) for p in others)
                raise ConfigError(f"--budget latency={limit:g} cannot be met: the fastest "
                                  f"design takes {total():.0f} cycles ({fixed:.0f} outside "
                                  "dense/conv layers)")
            slowest = max(movable, key=cost)
            i = valid[slowest.name].index(slowest.reuse_factor)
            slowest.reuse_factor = valid[slowest.name][i - 1]
