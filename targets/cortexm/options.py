"""The compile options of the Cortex-M family: one typed class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolchain.options import CommonOptions, option


def _stack(n: int) -> str | None:
    return None if n >= 1024 else "an integer of at least 1024"


@dataclass(frozen=True)
class CortexMOptions(CommonOptions):
    """What ``edgec compile`` takes for a Cortex-M target."""

    title: ClassVar[str] = "Cortex-M targets"

    stack_bytes: int | None = option(
        None, "SRAM reserved for the stack (default: the device file's stack_bytes)",
        metavar="N", check=_stack)
