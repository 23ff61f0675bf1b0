"""C compilers for the CPU devices: the host's cc, Debian's GNU cross gcc, or zig cc (PyPI).

Everything that runs a C compiler for this family goes through ``find_compiler``; a missing
compiler is a ToolMissingError that says how to install one. The flags for each CPU are the
device file's (``cflags``, ``zig_cflags``, ``ldflags``).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import ConfigError, ToolMissingError
from toolchain.targets.cpu.device import CpuDevice
from toolchain.tools import run_tool

COMPILERS = ("auto", "gcc", "zig")
# Flags that keep output byte-identical across runs and build folders.
_REPRO = ["-ffile-prefix-map=.=.", "-fno-ident"]


@dataclass(frozen=True)
class Compiler:
    kind: str  # "gcc" or "zig"
    cc: tuple[str, ...]  # argv prefix that runs the C compiler
    ar: tuple[str, ...]
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...] = ()

    def compile(self, src: Path, obj: Path, cwd: Path, extra: tuple[str, ...] = ()) -> None:
        run_tool([*self.cc, *self.cflags, *_REPRO, *extra, "-c", src.name, "-o", obj.name],
                 what=f"compiling {src.name}", cwd=cwd)

    def link(self, objs: list[Path], out: Path, cwd: Path, extra: tuple[str, ...] = ()) -> None:
        run_tool([*self.cc, *self.cflags, "-static", "-s", *[o.name for o in objs], "-lm",
                  *self.ldflags, *extra, "-o", out.name], what="linking the executable", cwd=cwd)

    def archive(self, objs: list[Path], out: Path, cwd: Path) -> None:
        # 'D': deterministic (zero timestamps and ids), so the library is reproducible.
        run_tool([*self.ar, "rcsD", out.name, *[o.name for o in objs]],
                 what="creating the static library", cwd=cwd)


def _arch_flags(dev: CpuDevice, kind: str) -> tuple[str, ...]:
    """-O2 and the device file's CPU flags for this compiler (``cflags`` or ``zig_cflags``)."""
    return ("-O2", *(dev.zig_cflags if kind == "zig" else dev.cflags))


def _zig_available() -> bool:
    return importlib.util.find_spec("ziglang") is not None


def find_compiler(dev: CpuDevice, choice: str = "auto") -> Compiler:
    if choice not in COMPILERS:
        raise ConfigError(f"--compiler must be one of {', '.join(COMPILERS)}, not '{choice}'")
    if dev.is_native:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise ToolMissingError("no C compiler for the host; install one: apt-get install gcc")
        return Compiler("gcc", (cc,), ("ar",), _arch_flags(dev, "gcc"))
    prefix = dev.cc_prefix
    if not prefix and not dev.zig_target:
        raise ConfigError(f"device '{dev.name}' names no C toolchain (cc_prefix or zig_target)")
    if choice in ("auto", "gcc") and prefix and shutil.which(prefix + "gcc"):
        return Compiler("gcc", (prefix + "gcc",), (prefix + "ar",), _arch_flags(dev, "gcc"),
                        dev.ldflags)
    if choice in ("auto", "zig") and dev.zig_target and _zig_available():
        zig = (sys.executable, "-m", "ziglang")
        return Compiler("zig", (*zig, "cc", "-target", dev.zig_target), (*zig, "ar"),
                        _arch_flags(dev, "zig"))
    raise ToolMissingError(
        f"no C cross compiler for {dev.triple} ({dev.name}); install one: "
        f"apt-get install {' '.join(dev.debian_packages)}  (as root), or pip install ziglang")
