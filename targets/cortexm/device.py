"""The Cortex-M family's typed view of a device file, and the TVM target it implies."""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.errors import ConfigError
from toolchain.targets.registry import Device


@dataclass(frozen=True)
class McuDevice:
    name: str
    cpu: str  # LLVM/gcc CPU name, e.g. "cortex-m4"
    triple: str  # LLVM triple, e.g. "thumbv7em-none-eabihf"
    features: tuple[str, ...]  # LLVM mattr, e.g. ("+dsp",)
    cflags: tuple[str, ...]  # gcc's flags for the same CPU, FPU and float ABI
    cc_prefix: str  # GNU bare-metal tools' prefix, "arm-none-eabi-"
    flash_bytes: int
    ram_bytes: int
    stack_bytes: int
    flash_origin: int  # where the board model maps the device's flash and SRAM
    ram_origin: int
    qemu: str  # "qemu-system-arm"
    qemu_machine: str  # e.g. "mps2-an386"
    qemu_cpu: str
    debian_packages: tuple[str, ...] = ()
    harness_origin: int = 0  # board memory for main.c's test I/O buffers (0: none, in RAM)
    harness_bytes: int = 0
    vector_bits: int = 128  # MVE 128; no float SIMD (M4/M7) 32: one float per lane
    int8_dot: str = "generic"  # the int8 GEMM step: "smlad" (DSP), "mve" (Helium)

    @property
    def has_dsp(self) -> bool:
        """The DSP extension's SIMD multiply-accumulates (smlad) are there."""
        return "+dsp" in self.features or "+mve" in " ".join(self.features)

    @property
    def double_fpu(self) -> bool:
        """gcc's -mfpu names a double-precision FPU (fpv5-d16, not fpv4-sp-d16)."""
        fpu = next((f.split("=", 1)[1] for f in self.cflags if f.startswith("-mfpu=")), "auto")
        return "-sp-" not in fpu

    @property
    def has_mve(self) -> bool:
        return any(f.startswith("+mve") for f in self.features)

    @classmethod
    def from_device(cls, dev: Device) -> "McuDevice":
        f = dev.facts
        try:
            ints = {k: int(f[k]) for k in ("flash_bytes", "ram_bytes", "flash_origin",
                                           "ram_origin")}
            return cls(dev.name, str(f["cpu"]), str(f["triple"]),
                       tuple(str(x) for x in f.get("features", ())),
                       tuple(str(x) for x in f["cflags"]), str(f["cc_prefix"]),
                       stack_bytes=int(f.get("stack_bytes", 8192)), qemu=str(f["qemu"]),
                       qemu_machine=str(f["qemu_machine"]), qemu_cpu=str(f["qemu_cpu"]),
                       debian_packages=tuple(str(x) for x in f.get("debian_packages", ())),
                       vector_bits=int(f.get("vector_bits", 128)),
                       harness_origin=int(f.get("harness_origin", 0)),
                       harness_bytes=int(f.get("harness_bytes", 0)),
                       int8_dot=str(f.get("int8_dot", "generic")), **ints)
        except KeyError as exc:
            raise ConfigError(f"device file for '{dev.name}' lacks the key {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"device file for '{dev.name}': {exc}") from None

    def vector_unit(self):
        """The SIMD facts the CPU rules and the int8 lowering read (targets/cpu/vector.py)."""
        from toolchain.targets.cpu.vector import VectorUnit

        try:
            return VectorUnit(self.vector_bits, False, self.int8_dot)
        except ValueError as exc:
            raise ConfigError(f"device file for '{self.name}': {exc}") from None

    @property
    def install_hint(self) -> str:
        return f"apt-get install {' '.join(self.debian_packages)}  (as root)"

    def tvm_target(self):
        """A tvm.target.Target: LLVM for the bare-metal triple, the CPU and its features."""
        import tvm

        spec = {"kind": "llvm", "mtriple": self.triple, "mcpu": self.cpu, "mfloat-abi": "hard"}
        if self.features:
            spec["mattr"] = list(self.features)
        return tvm.target.Target(spec)
