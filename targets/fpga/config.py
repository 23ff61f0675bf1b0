"""The FPGA build configuration: typed, validated once, saved next to the artifacts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from toolchain.errors import ConfigError
from toolchain.targets.registry import Device

from .precision import Fixed, parse_fixed

HLS_BACKENDS = {"vitis": "Vitis", "vivado": "Vivado"}
IO_TYPES = ("io_parallel", "io_stream")
STRATEGIES = ("latency", "resource", "distributed_arithmetic")
BUDGET_KINDS = ("dsp", "lut", "latency")


@dataclass(frozen=True)
class FpgaDevice:
    """The resources of one FPGA part (from ``targets/devices/fpga-*.toml``)."""

    name: str
    part: str
    clock_period_ns: float
    dsp: int
    lut: int
    ff: int
    bram36: int
    uram: int = 0

    @classmethod
    def from_device(cls, dev: Device) -> "FpgaDevice":
        f = dev.facts
        try:
            return cls(dev.name, str(f["part"]), float(f["clock_period_ns"]), int(f["dsp"]),
                       int(f["lut"]), int(f["ff"]), int(f["bram36"]), int(f.get("uram", 0)))
        except KeyError as exc:
            raise ConfigError(f"device file {dev.name}.toml lacks the key {exc}") from None

    def totals(self) -> dict[str, int]:
        return {"dsp": self.dsp, "lut": self.lut, "ff": self.ff, "bram18": 2 * self.bram36}


@dataclass(frozen=True)
class FpgaConfig:
    """Everything ``edgec compile --target fpga-*`` decides, after validation."""

    hls_backend: str = "Vitis"
    io_type: str = "io_parallel"
    strategy: str = "latency"
    reuse_default: int = 1
    reuse_per_layer: dict[str, int] = field(default_factory=dict)
    budget: tuple[str, float] | None = None
    clock_period_ns: float = 5.0
    default_precision: Fixed = Fixed(16, 6)
    project_name: str = "edgec_fpga"

    def to_json(self) -> dict:
        d = asdict(self)
        d["default_precision"] = self.default_precision.hls()
        d["budget"] = f"{self.budget[0]}={self.budget[1]:g}" if self.budget else None
        return d


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"invalid {what} '{text}': expected a positive integer")
    return value


def from_args(args, device: FpgaDevice) -> FpgaConfig:
    """Validate the FPGA options in ``args`` (an ``FpgaOptions``, or anything with its
    attributes); each bad value is a ConfigError naming its option."""
    backend = (getattr(args, "hls_backend", None) or "vitis").lower()
    if backend not in HLS_BACKENDS:
        raise ConfigError(f"invalid --hls-backend '{backend}': choose vitis or vivado")
    io_type = (getattr(args, "io_type", None) or "io_parallel").lower()
    if io_type not in IO_TYPES:
        raise ConfigError(f"invalid --io-type '{io_type}': choose " + " or ".join(IO_TYPES))
    strategy = (getattr(args, "strategy", None) or "latency").lower()
    if strategy == "da":
        strategy = "distributed_arithmetic"
    if strategy not in STRATEGIES:
        raise ConfigError(f"invalid --strategy '{strategy}': choose " + ", ".join(STRATEGIES))
    reuse_default, per_layer = 1, {}
    for item in getattr(args, "reuse_factor", None) or []:
        name, sep, value = str(item).rpartition("=")
        if sep:
            per_layer[name] = _positive_int(value, f"--reuse-factor for layer '{name}'")
        else:
            reuse_default = _positive_int(value, "--reuse-factor")
    if strategy == "distributed_arithmetic" and (reuse_default != 1 or
                                                 any(v != 1 for v in per_layer.values())):
        raise ConfigError("invalid --reuse-factor: the distributed_arithmetic strategy is fully "
                          "unrolled and takes only reuse factor 1")
    budget = None
    if getattr(args, "budget", None):
        kind, sep, value = str(args.budget).partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in BUDGET_KINDS:
            raise ConfigError(f"invalid --budget '{args.budget}': expected dsp=N, lut=N or "
                              "latency=CYCLES")
        budget = (kind, float(_positive_int(value.strip(), "--budget value")))
        if per_layer or reuse_default != 1:
            raise ConfigError("give either --budget or --reuse-factor, not both")
        if strategy == "distributed_arithmetic":
            raise ConfigError("invalid --budget with --strategy distributed_arithmetic: it is "
                              "fully unrolled (reuse factor 1); its size comes from da4ml")
    clock = getattr(args, "clock_period", None)
    clock = device.clock_period_ns if clock is None else float(clock)
    if not 0.5 <= clock <= 100:
        raise ConfigError(f"invalid --clock-period {clock}: expected 0.5 to 100 ns")
    precision = parse_fixed(getattr(args, "default_precision", None) or "fixed<16,6>")
    return FpgaConfig(HLS_BACKENDS[backend], io_type, strategy, reuse_default, per_layer, budget,
                      clock, precision)
