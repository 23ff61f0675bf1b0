"""The options of the FPGA family: compile (one typed class) and simulate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from toolchain.options import CommonOptions, Options, option

from . import config as fcfg
from .precision import parse_fixed


def _strategy(text: str) -> str:
    text = text.strip().lower()
    return "distributed_arithmetic" if text == "da" else text


def _precision(text: str) -> str | None:
    parse_fixed(text, "--default-precision")  # its own one-line error
    return None


def _positive(n: int) -> str | None:
    return None if n >= 1 else "a positive integer"


# Only the clock period's default comes from the device; validation needs none.
_ANY_DEVICE = fcfg.FpgaDevice("any", "any", 5.0, 0, 0, 0, 0)


@dataclass(frozen=True)
class FpgaOptions(CommonOptions):
    """What ``edgec compile`` takes for an FPGA target (hls4ml project + RTL)."""

    title: ClassVar[str] = "FPGA targets (fpga-*)"

    hls_backend: str = option("vitis", "hls4ml backend", choices=tuple(fcfg.HLS_BACKENDS),
                              normalize=str.lower)
    io_type: str = option("io_parallel", "hls4ml IO type", choices=fcfg.IO_TYPES,
                          normalize=str.lower)
    strategy: str = option("latency", "HLS strategy for dense and conv layers (da is "
                                      "distributed_arithmetic)", choices=fcfg.STRATEGIES,
                           normalize=_strategy)
    reuse_factor: tuple[str, ...] = option(
        (), "reuse factor for all layers (N) or one layer (LAYER=N); repeatable",
        metavar="N|LAYER=N")
    budget: str | None = option(None, "let edgec pick valid reuse factors within this budget",
                                metavar="dsp=N|lut=N|latency=CYCLES")
    clock_period: float | None = option(None, "clock period in ns (default: the device's)",
                                        metavar="NS")
    default_precision: str = option("fixed<16,6>", "precision of float layers and "
                                                   "activations", metavar="fixed<W,I>",
                                    check=_precision)

    def validate(self) -> None:
        fcfg.from_args(self, _ANY_DEVICE)  # the checks across options (budget, reuse, clock)

    def config(self, device: fcfg.FpgaDevice) -> fcfg.FpgaConfig:
        """The build configuration for ``device`` (the clock defaults to the device's)."""
        return fcfg.from_args(self, device)


@dataclass(frozen=True)
class FpgaSimulateOptions(Options):
    """What ``edgec simulate`` takes for an FPGA folder."""

    title: ClassVar[str] = "FPGA targets (fpga-*)"

    test_data: Path | None = option(None, "inputs for the C emulation (default: the zoo test "
                                          "set named by --dataset, else seeded random inputs)",
                                    metavar="X.npy")
    test_labels: Path | None = option(None, "labels for --test-data, to report accuracy",
                                      metavar="Y.npy")
    dataset: str | None = option(None, "use the test set of this zoo model "
                                       "(toolchain.models.dataset)", metavar="ZOO_NAME")
    samples: int | None = option(None, "simulate at most N samples", metavar="N",
                                 check=_positive)
    no_rtl: bool = option(False, "skip the RTL simulation")
