"""The ARM CPU family (and ``host``): TVM-compiled kernels + a generated C driver, no runtime."""

from toolchain.targets.cpu.backend import CpuBackend  # noqa: F401  (registers itself)
