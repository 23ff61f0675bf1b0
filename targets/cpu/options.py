"""The compile options of the CPU family (ARM, RISC-V and the host): one typed class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from toolchain.options import CommonOptions, option
from toolchain.targets.cpu.cc import COMPILERS

MAX_THREADS = 256


def _pipelines() -> tuple[str, ...]:
    from toolchain.targets.cpu.pipeline import PIPELINES

    return ("auto", *sorted(PIPELINES))


def _trials(n: int) -> str | None:
    return None if n >= 1 else "a positive number of trials per kernel"


def _threads(n: int) -> str | None:
    return None if 1 <= n <= MAX_THREADS else f"an integer from 1 to {MAX_THREADS}"


@dataclass(frozen=True)
class CpuOptions(CommonOptions):
    """What ``edgec compile`` takes for an ARM, RISC-V or host target."""

    title: ClassVar[str] = "ARM, RISC-V and host targets"

    pipeline: str = option(
        "auto", "Relax pass pipeline: auto is cpu-int for a QDQ model (int8 kernels, int8 "
                "activations between layers) and cpu for a float one; cpu on a QDQ model "
                "computes it in float32; cpu-int needs a QDQ model", choices=_pipelines)
    schedule: str = option("auto", "kernel schedules: edgec's CPU rules (auto) or plain loops "
                                   "(none)", choices=("auto", "none"))
    compiler: str = option("auto", "C cross compiler: Debian's gcc, zig cc (PyPI ziglang), or "
                                   "auto", choices=COMPILERS)
    threads: int = option(
        1, "threads for the kernels: 1 is single-threaded with no pthread dependency; N > 1 "
           "parallelizes convs, matmuls and large elementwise kernels over a static pool of "
           "N-1 pthreads", metavar="N", check=_threads)
    keep_build: bool = option(False, "keep the intermediate objects and sources in OUT/build/")
    tune: int | None = option(
        None, "MetaSchedule-tune each conv/matmul kernel for TRIALS candidates, timed on "
              "this machine (host) or scored by exact instruction counts under qemu (ARM, "
              "RISC-V); a kernel keeps the tuned schedule only where it measured better than "
              "edgec's own, records are reused by later compiles",
        metavar="TRIALS", check=_trials)
    tune_db: Path | None = option(
        None, "tuning records folder (default ~/.cache/edgec/tune with --tune); given "
              "without --tune, its records are applied and nothing is tuned", metavar="DIR")
