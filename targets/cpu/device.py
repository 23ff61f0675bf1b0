"""The CPU family's typed view of a device file, and the TVM target it implies.

Everything that differs between CPUs is a key of the device file (targets/devices/*.toml):
the triple and CPU for LLVM, the C compiler's flags, the emulator, the SIMD facts the kernel
rules read (targets/cpu/vector.py). ``triple = "native"`` is this machine; its facts
are asked of LLVM at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.errors import ConfigError
from toolchain.targets.cpu.vector import VectorUnit
from toolchain.targets.registry import Device


@dataclass(frozen=True)
class CpuDevice:
    name: str
    triple: str  # "native" for the host
    cpu: str
    features: tuple[str, ...]
    float_abi: str
    qemu: str  # qemu-user program, "" for native
    qemu_cpu: str
    cc_prefix: str = ""  # GNU cross tools' prefix, e.g. "aarch64-linux-gnu-"; "" for native
    zig_target: str = ""  # `zig cc -target` triple, "" when zig is not an option
    debian_packages: tuple[str, ...] = ()  # what apt-get installs for this device
    cflags: tuple[str, ...] = ()  # gcc's flags for this CPU (-mcpu, -march, -mfpu, ...)
    zig_cflags: tuple[str, ...] = ()  # the same for zig cc (its CPU names differ)
    ldflags: tuple[str, ...] = ()  # gcc's extra link flags
    mabi: str = ""  # LLVM's ABI name where the triple does not imply it (RISC-V: lp64d)
    vector: VectorUnit | None = None  # None: LLVM's view of the target (the host)

    @property
    def is_native(self) -> bool:
        return self.triple == "native"

    @property
    def machine(self) -> str:
        """``uname -m`` of a machine that runs this device's binaries without an emulator."""
        return self.triple.split("-")[0]

    @property
    def has_dotprod(self) -> bool:
        return "+dotprod" in self.features

    @classmethod
    def from_device(cls, dev: Device) -> "CpuDevice":
        f = dev.facts

        def strings(key):
            value = f.get(key, ())
            if isinstance(value, str) or not all(isinstance(x, str) for x in value):
                raise ConfigError(f"device file for '{dev.name}': {key} must be a list of "
                                  "strings")
            return tuple(value)

        try:
            return cls(dev.name, str(f["triple"]), str(f["cpu"]), strings("features"),
                       str(f.get("float_abi", "")), str(f.get("qemu", "")),
                       str(f.get("qemu_cpu", "")), str(f.get("cc_prefix", "")),
                       str(f.get("zig_target", "")), strings("debian_packages"),
                       strings("cflags"), strings("zig_cflags"), strings("ldflags"),
                       str(f.get("mabi", "")), _vector_unit(dev))
        except KeyError as exc:
            raise ConfigError(f"device file for '{dev.name}' lacks the key {exc}") from None

    def tvm_target(self):
        """A tvm.target.Target for this device (dict form: TVM 0.27 rejects -mcpu strings)."""
        import tvm
        from tvm.target import codegen

        if self.is_native:
            spec = {"kind": "llvm", "mtriple": codegen.llvm_get_system_triple(),
                    "mcpu": codegen.llvm_get_system_cpu()}
        else:
            spec = {"kind": "llvm", "mtriple": self.triple, "mcpu": self.cpu}
            if self.features:
                spec["mattr"] = list(self.features)
            if self.float_abi:
                spec["mfloat-abi"] = self.float_abi
            if self.mabi:
                spec["mabi"] = self.mabi
        return tvm.target.Target(spec)

    def vector_unit(self) -> VectorUnit:
        """The SIMD facts the kernel rules read: the device file's, else this machine's."""
        return self.vector or native_vector_unit(self.tvm_target())


def _vector_unit(dev: Device) -> VectorUnit | None:
    f = dev.facts
    keys = ("vector_bits", "fma_by_element", "int8_dot")
    if not any(k in f for k in keys):
        return None
    try:
        return VectorUnit(int(f.get("vector_bits", 128)), bool(f.get("fma_by_element", False)),
                          str(f.get("int8_dot", "generic")))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"device file for '{dev.name}': {exc}") from None


# What this machine's CPU features (as LLVM reports them) mean for the kernel rules, first
# match wins: (LLVM feature, AArch64 only, int8_dot).
_NATIVE_INT8 = (("avx512vnni", False, "vpdpbusd"), ("dotprod", True, "sdot"),
                ("neon", True, "smull"))


def native_vector_unit(target) -> VectorUnit:
    """This machine's SIMD facts, from LLVM: its vector width, and the int8 dot instruction
    and by-element FMA its features give."""
    from tvm.target import codegen

    aarch64 = bool(target.attrs.get("feature.is_aarch64", False))

    def has(feature: str) -> bool:
        try:
            return bool(codegen.llvm_cpu_has_features([feature], target))
        except Exception:  # noqa: BLE001  (a feature LLVM does not know for this CPU)
            return False

    dot = next((name for feature, arm_only, name in _NATIVE_INT8
                if (aarch64 or not arm_only) and has(feature)), "generic")
    return VectorUnit(int(codegen.llvm_get_vector_width(target)), aarch64, dot)
