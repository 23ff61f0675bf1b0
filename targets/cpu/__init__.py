"""The ARM CPU family (and ``host``): TVM-compiled kernels + a generated C driver, no runtime."""

from toolchain.targets.arm.backend import ArmBackend  # noqa: F401  (registers itself)
