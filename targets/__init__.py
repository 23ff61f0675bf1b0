"""Targets: device descriptions as data (``devices/*.toml``) and one backend folder per family.

Imported as ``toolchain.targets``. A device file names its family; the family's backend module
(``toolchain.targets.<family>``) is imported only when a device of that family is used, so the
ARM path never imports hls4ml and the FPGA path never imports TVM.
"""

from toolchain.targets.registry import (  # noqa: F401
    Backend,
    Device,
    backend_for,
    device,
    devices,
    register_backend,
)
