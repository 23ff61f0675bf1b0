"""FPGA backend: hls4ml projects with verified numerics, da4ml RTL, estimates (issue 4).

Imported lazily by the registry when a device of family "fpga" is used.
"""

from toolchain.targets.fpga.backend import FpgaBackend  # noqa: F401  (registers the family)
