"""The Cortex-M family: TVM kernels for bare-metal microcontrollers, no runtime, no OS."""

from toolchain.targets.cortexm.backend import CortexMBackend  # noqa: F401  (registers itself)
