"""The ARM family's typed view of a device file, and the TVM target it implies."""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.errors import ConfigError
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

    @property
    def is_native(self) -> bool:
        return self.triple == "native"

    @property
    def is_arm32(self) -> bool:
        return self.triple.startswith(("arm", "thumb"))

    @property
    def has_dotprod(self) -> bool:
        return "+dotprod" in self.features

    @classmethod
    def from_device(cls, dev: Device) -> "CpuDevice":
        f = dev.facts
        try:
            return cls(dev.name, str(f["triple"]), str(f["cpu"]),
                       tuple(str(x) for x in f.get("features", ())),
                       str(f.get("float_abi", "")), str(f.get("qemu", "")),
                       str(f.get("qemu_cpu", "")), str(f.get("cc_prefix", "")),
                       str(f.get("zig_target", "")),
                       tuple(str(x) for x in f.get("debian_packages", ())))
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
        return tvm.target.Target(spec)
