"""Does the model fit the microcontroller? Planned sizes before the build, measured after.

``check_planned`` runs before any code is generated: the arena, the kernels' workspace and the
stack reserve must fit the device's SRAM, and the weights its flash; otherwise one line names
the sizes. The linker script's regions have the device's sizes too (``board.linker_script``),
so the final image is checked exactly. ``measure`` reads the linked image's sections.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.errors import ModelError
from toolchain.targets.cortexm.device import McuDevice

FLASH_SECTIONS = (".text", ".got", ".ARM.extab", ".ARM.exidx", ".data")  # .data's initial values
RAM_SECTIONS = (".data", ".bss", ".stack")


class DoesNotFitError(ModelError):
    """The model needs more flash or SRAM than the device has."""


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def capacity(dev: McuDevice) -> str:
    return f"{kib(dev.flash_bytes)} flash, {kib(dev.ram_bytes)} SRAM"


def check_planned(dev: McuDevice, model: str, arena: int, workspace: int, weights: int,
                  io_bytes: int = 0) -> None:
    """``io_bytes``: the test driver's (main.c) static input and output buffers."""
    ram = arena + workspace + dev.stack_bytes + io_bytes
    if ram > dev.ram_bytes:
        io = f" + main's input/output buffers {io_bytes}" if io_bytes else ""
        raise DoesNotFitError(
            f"{model} does not fit {dev.name}: it needs {ram} bytes ({kib(ram)}) of SRAM "
            f"(arena {arena} + workspace {workspace} + stack {dev.stack_bytes}{io}), the "
            f"device has {dev.ram_bytes} ({kib(dev.ram_bytes)})")
    if weights > dev.flash_bytes:
        raise DoesNotFitError(
            f"{model} does not fit {dev.name}: its weights need {weights} bytes "
            f"({kib(weights)}) of flash, the device has {dev.flash_bytes} "
            f"({kib(dev.flash_bytes)})")


def measure(cc, dev: McuDevice, elf: Path, lib: Path, arena: int, workspace: int,
            weights: int) -> dict:
    """Flash and SRAM of the linked image and of libmodel.a alone, against the device."""
    sections = cc.section_sizes(elf)
    flash = sum(sections.get(s, 0) for s in FLASH_SECTIONS)
    ram = sum(sections.get(s, 0) for s in RAM_SECTIONS)
    lib_sizes = cc.library_sizes(lib)
    return {
        "board": dev.qemu_machine,
        "flash_bytes": flash,
        "flash_available": dev.flash_bytes,
        "ram_bytes": ram,
        "ram_available": dev.ram_bytes,
        "stack_bytes": dev.stack_bytes,
        # libmodel.a alone (what an application links): code + const weights, and its
        # statics (arena, workspace, error text); the image adds main, start-up and newlib.
        "library_flash_bytes": lib_sizes["text"] + lib_sizes["data"],
        "library_ram_bytes": lib_sizes["data"] + lib_sizes["bss"],
        # .harness: main.c's test input/output buffers, in board memory outside the chip's
        "sections": {k: v for k, v in sections.items()
                     if k in FLASH_SECTIONS + RAM_SECTIONS + (".harness",)},
    }
