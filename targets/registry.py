"""The target registry: devices are TOML files, backends register themselves per family."""

from __future__ import annotations

import abc
import argparse
import copy
import importlib
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from toolchain.errors import ConfigError

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class Device:
    """One device description, read from ``targets/devices/<name>.toml``.

    ``facts`` holds the family-specific keys as written in the file; each backend turns them
    into its own typed description (``Backend.describe_device``) and validates them there.
    """

    name: str
    family: str
    summary: str
    facts: Mapping[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """A target family: which ops it takes, how it compiles, runs and reports.

    Subclasses register with ``@register_backend`` in ``toolchain.targets.<family>``.
    """

    family: ClassVar[str]

    @abc.abstractmethod
    def describe(self, device: Device) -> str:
        """One line for ``edgec targets``: triple/part, CPU, features or resources."""

    def add_compile_options(self, parser: argparse.ArgumentParser) -> None:
        """Add this family's options to ``edgec compile`` (an argument group)."""

    def register_compile_options(self, parser: argparse.ArgumentParser) -> None:
        """``add_compile_options``, recording each option it added: its dest, its flag and its
        default as added (before any config file changes the parser's defaults)."""
        before = set(map(id, parser._actions))
        self.add_compile_options(parser)
        self._compile_options = {
            a.dest: (max(a.option_strings, key=len), copy.deepcopy(a.default))
            for a in parser._actions if id(a) not in before and a.option_strings}

    def compile_options(self) -> dict[str, tuple[str, Any]]:
        """This family's compile options, ``dest -> (flag, default)``, as last registered."""
        return dict(getattr(self, "_compile_options", {}))

    def foreign_options(self, args: argparse.Namespace) -> list[str]:
        """The flags of this family's compile options that ``args`` sets to a non-default
        value (for a target of another family, each one is an error)."""
        return [flag for dest, (flag, default) in self.compile_options().items()
                if getattr(args, dest, default) != default]

    @abc.abstractmethod
    def compile(self, model_path: Path, model: "onnx.ModelProto", device: Device,
                args: argparse.Namespace, stage: Path) -> dict:
        """Compile for ``device`` into the staging folder and return the report (a dict).

        ``model`` is the checked model with static input shapes (``--input-shape`` applied);
        ``model_path`` is the file as given. The report may set ``tolerance``: the allowed max
        error relative to the output range that ``edgec verify`` applies.
        """

    @abc.abstractmethod
    def run(self, out_dir: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the compiled artifact in ``out_dir`` (natively, under qemu, or in emulation)."""

    def simulate(self, out_dir: Path, args: argparse.Namespace) -> dict:
        """Simulate the artifact and return a report (default: nothing to simulate)."""
        raise ConfigError(f"'edgec simulate' is not available for the {self.family} family; "
                          "use 'edgec verify'")

    def add_simulate_options(self, parser: argparse.ArgumentParser) -> None:
        """Add this family's options to ``edgec simulate``."""

    def check_tools(self, device: Device, workdir: Path) -> list[str]:
        """Run this family's tools for ``device`` on a one-line program in ``workdir``.

        Returns one line per missing or broken piece, each saying how to install it (empty when
        everything works). Used by ``edgec doctor`` and by the setup script.
        """
        return []

    def compiler_argv(self, device: Device, options: Any) -> tuple[str, ...]:
        """The argv of the C/C++ compiler a compile for ``device`` with ``options`` (the typed
        compile options) runs; its ``--version`` line keys the build cache. ``("absent",)``
        when it is not installed (the compile step then says how to install it)."""
        return ()


def debian_packages(folder: Path | None = None) -> list[str]:
    """Every Debian package the shipped devices name (``debian_packages``), sorted, unique.

    Reads the TOML files with the standard library only, so the setup script can call it
    before any dependency is installed (``folder`` defaults to the shipped devices).
    """
    if folder is None:
        entries = list((resources.files("toolchain.targets") / "devices").iterdir())
    else:
        entries = list(Path(folder).iterdir())
    pkgs: set[str] = set()
    for entry in entries:
        if entry.name.endswith(".toml"):
            pkgs.update(str(p) for p in tomllib.loads(entry.read_text()).get("debian_packages", ()))
    return sorted(pkgs)


_BACKENDS: dict[str, Backend] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    _BACKENDS[cls.family] = cls()
    return cls


@lru_cache(maxsize=1)
def devices() -> dict[str, Device]:
    """All device descriptions shipped in ``targets/devices``, by name."""
    found: dict[str, Device] = {}
    folder = resources.files("toolchain.targets") / "devices"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        data = tomllib.loads(entry.read_text())
        name = Path(entry.name).stem
        try:
            family = data.pop("family")
            summary = data.pop("summary")
        except KeyError as exc:
            raise RuntimeError(f"device file {entry.name} lacks the key {exc}") from None
        found[name] = Device(name=name, family=family, summary=summary, facts=data)
    return found


def device(name: str) -> Device:
    all_devices = devices()
    if name not in all_devices:
        raise ConfigError(f"unknown target '{name}'; known targets: " + ", ".join(all_devices))
    return all_devices[name]


RENAMED_FAMILIES = {"arm": "cpu"}  # output folders written before the host joined the CPU family


def backend_for(family: str) -> Backend:
    family = RENAMED_FAMILIES.get(family, family)
    if family not in _BACKENDS:
        try:
            importlib.import_module(f"toolchain.targets.{family}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("toolchain.targets"):
                raise ConfigError(f"no backend for target family '{family}'") from None
            raise
    if family not in _BACKENDS:
        raise ConfigError(f"no backend registered for target family '{family}'")
    return _BACKENDS[family]
