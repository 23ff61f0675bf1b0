"""The bare-metal GNU tools (Debian's gcc-arm-none-eabi + newlib): compile, archive, link, size.

Everything this family runs of the cross tools goes through ``find_compiler``; a missing tool is
a ToolMissingError that names the apt-get line.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import ToolFailedError, ToolMissingError
from toolchain.targets.cortexm.device import McuDevice
from toolchain.targets.cortexm.fit import DoesNotFitError
from toolchain.tools import run_tool

# -ffunction/data-sections + --gc-sections: only what main reaches is linked; byte-identical
# output across runs and build folders.
_CFLAGS = ("-O2", "-ffunction-sections", "-fdata-sections", "-ffreestanding",
           "-ffile-prefix-map=.=.", "-fno-ident")


@dataclass(frozen=True)
class BareMetalCompiler:
    prefix: str
    cflags: tuple[str, ...]

    @property
    def gcc(self) -> str:
        return self.prefix + "gcc"

    def compile(self, src: Path, obj: Path, cwd: Path) -> None:
        run_tool([self.gcc, *self.cflags, *_CFLAGS, "-c", src.name, "-o", obj.name],
                 what=f"compiling {src.name}", cwd=cwd)

    def archive(self, objs: list[Path], out: Path, cwd: Path) -> None:
        run_tool([self.prefix + "ar", "rcsD", out.name, *[o.name for o in objs]],
                 what="creating the static library", cwd=cwd)

    def link(self, objs: list[Path], script: Path, out: Path, cwd: Path) -> None:
        """Link with newlib-nano's libc and libm, our start-up and no crt0 (-nostartfiles)."""
        argv = [self.gcc, *self.cflags, "-nostartfiles", "--specs=nano.specs", "-T", script.name,
                "-Wl,--gc-sections", "-Wl,--no-warn-rwx-segments", *[o.name for o in objs],
                "-lm", "-lc", "-lgcc", "-o", out.name]
        try:
            run_tool(argv, what="linking the image", cwd=cwd)
        except ToolFailedError as exc:
            over = re.findall(r"region [`'](\w+)' overflowed by (\d+) bytes", str(exc))
            if over:
                raise DoesNotFitError("the image does not fit: " + ", ".join(
                    f"{region} overflowed by {int(n)} bytes" for region, n in over)) from None
            raise

    def drop_unwind_tables(self, obj: Path) -> None:
        """Remove LLVM's unwind tables from the kernels: they name the C++ personality routine
        (``__aeabi_unwind_cpp_pr0``), which would link libgcc's unwinder, abort() and malloc
        into an image that has no exceptions."""
        run_tool([self.prefix + "objcopy", "--remove-section=.ARM.exidx*",
                  "--remove-section=.rel.ARM.exidx*", "--remove-section=.ARM.extab*",
                  "--strip-symbol=__aeabi_unwind_cpp_pr0", str(obj)],
                 what="dropping the kernels' unwind tables")

    def redefine_symbols(self, obj: Path, renames: dict[str, str]) -> None:
        """Rename symbols of an object in place (``objcopy --redefine-sym old=new``)."""
        if renames:
            run_tool([self.prefix + "objcopy",
                      *[f"--redefine-sym={a}={b}" for a, b in renames.items()], str(obj)],
                     what="renaming the kernels' float64 helper calls")

    def undefined_symbols(self, obj: Path) -> set[str]:
        proc = run_tool([self.prefix + "nm", "-u", str(obj)], what="listing symbols")
        return {line.split()[-1] for line in proc.stdout.decode().splitlines() if line.strip()}

    def section_sizes(self, elf: Path) -> dict[str, int]:
        """Bytes per allocated section of the linked image (``size -A``)."""
        proc = run_tool([self.prefix + "size", "-A", str(elf)], what="reading section sizes")
        sizes: dict[str, int] = {}
        for line in proc.stdout.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
                sizes[parts[0]] = int(parts[1])
        return sizes

    def library_sizes(self, lib: Path) -> dict[str, int]:
        """text (code + const data), data and bss of an archive's members, summed."""
        proc = run_tool([self.prefix + "size", "-t", str(lib)], what="reading library sizes")
        last = proc.stdout.decode().strip().splitlines()[-1].split()
        return {"text": int(last[0]), "data": int(last[1]), "bss": int(last[2])}


def find_compiler(dev: McuDevice) -> BareMetalCompiler:
    for tool in ("gcc", "ar", "size", "objcopy", "nm"):
        if shutil.which(dev.cc_prefix + tool) is None:
            raise ToolMissingError(f"{dev.cc_prefix}{tool} not found (bare-metal ARM gcc for "
                                   f"{dev.name}); install: {dev.install_hint}")
    return BareMetalCompiler(dev.cc_prefix, dev.cflags)
