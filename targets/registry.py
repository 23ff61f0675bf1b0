"""The target registry: devices are TOML files, backends register themselves per family."""

from __future__ import annotations

import abc
import importlib
import tomllib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from toolchain.errors import ConfigError, ModelError, UnsupportedOpError
from toolchain.options import CommonOptions, Options

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


@dataclass(frozen=True)
class NodeSupport:
    """Whether a backend takes one node of a model (``Backend.support``), and why not.

    ``node`` is the node's name (``#i`` for the unnamed i-th node), ``index`` its position in
    the graph; a problem of the graph as a whole has ``index`` -1 (and ``op`` "" unless the
    backend names one, e.g. "(graph output)").
    """

    node: str
    op: str
    supported: bool
    reason: str = ""
    index: int = -1

    def to_json(self) -> dict:
        return {"node": self.node, "op": self.op, "supported": self.supported,
                "reason": self.reason, "index": self.index}


def refuse_unsupported(found: list[NodeSupport], target: str, model_name: str) -> None:
    """Raise for the first node ``found`` refuses, with how many are refused in all: an
    UnsupportedOpError naming the node and the op (a ModelError for a whole-graph problem)."""
    nodes = [s for s in found if s.index >= 0]
    bad = sorted((s for s in nodes if not s.supported), key=lambda s: s.index)
    bad += [s for s in found if s.index < 0 and not s.supported]
    if not bad:
        return
    first = bad[0]
    count = sum(not s.supported for s in nodes)
    more = (f" ({count} of {len(nodes)} nodes unsupported; 'edgec check {model_name} -t "
            f"{target}' lists them)") if count or len(bad) > 1 else ""
    if first.op:
        raise UnsupportedOpError(first.op, first.node, target, first.reason + more)
    raise ModelError(first.reason + more)


class Backend(abc.ABC):
    """A target family: which ops it takes, how it compiles, runs and reports.

    Subclasses register with ``@register_backend`` in ``toolchain.targets.<family>``.
    """

    family: ClassVar[str]
    # One typed, frozen class of compile options (``toolchain.options``): its fields are the
    # family's flags, its build-file keys and its API keywords, and it is saved in edgec.json.
    Options: ClassVar[type[CommonOptions]] = CommonOptions
    # The same for ``edgec simulate`` (None: the family has nothing to simulate).
    SimulateOptions: ClassVar[type[Options] | None] = None
    # The frozen dataclass its report.json is read as (``toolchain.reports.schema``), with
    # at least the keys the report's page frame reads: ``target``, ``input_model``,
    # ``total_seconds``, ``schema_version``. None: the family writes no report.json.
    report_class: ClassVar[type | None] = None
    # report.json keys compared with the stored baselines (toolchain.reports.baseline): dotted
    # keys, ``name#`` the length of a list, each (relative, absolute) tolerance; (0, 0) exact
    baseline_tolerances: ClassVar[Mapping[str, tuple[float, float]]] = {}

    @abc.abstractmethod
    def describe(self, device: Device) -> str:
        """One line for ``edgec targets``: triple/part, CPU, features or resources."""

    @abc.abstractmethod
    def support(self, model: "onnx.ModelProto", device: Device) -> list[NodeSupport]:
        """Every node of ``model`` (checked, static input shapes) and whether this family takes
        it for ``device``, with the reason when not, plus any whole-graph problem.

        Partitioner-style (ExecuTorch's partitioner, ONNX Runtime's GetCapability): it reports,
        it changes nothing, and it is fast (no C compile, no project written). ``edgec
        compile`` asks it first; ``edgec check`` prints it.
        """

    @abc.abstractmethod
    def compile(self, model_path: Path, model: "onnx.ModelProto", device: Device,
                options: CommonOptions, stage: Path) -> dict:
        """Compile for ``device`` into the staging folder and return the report (a dict).

        ``model`` is the checked model with static input shapes (``--input-shape`` applied);
        ``model_path`` is the file as given; ``options`` is an instance of ``self.Options``,
        already validated (the caller saves it in the manifest). The report may set
        ``tolerance``: the allowed max error relative to the output range that ``edgec
        verify`` applies.
        """

    @abc.abstractmethod
    def run(self, out_dir: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the compiled artifact in ``out_dir`` (natively, under qemu, or in emulation)."""

    def simulate(self, out_dir: Path, options: Options) -> dict:
        """Simulate the artifact and return a report (default: nothing to simulate).

        ``options`` is an instance of ``self.SimulateOptions``; the compile options are the
        folder's own, in its edgec.json."""
        raise ConfigError(f"'edgec simulate' is not available for the {self.family} family; "
                          "use 'edgec verify'")

    # How it summarises its report: ``edgec report OUT`` and its HTML page (the frame, the
    # verdict and the JSON files are toolchain.reports'; ``folder`` is a
    # toolchain.reports.Folder whose ``report`` is an instance of ``report_class``).
    # By default these call the functions of the same role (rows, headline, sections,
    # build_facts) in the module ``report_page`` names, imported when first needed (it may
    # import matplotlib); a family without one reports nothing beyond the frame.
    report_page: ClassVar[str | None] = None

    def _page(self):
        return importlib.import_module(self.report_page) if self.report_page else None

    def report_rows(self, folder) -> list[tuple[str, str]]:
        """The family's (label, value) rows of ``edgec report OUT``, after the verdict."""
        page = self._page()
        return page.rows(folder) if page else []

    def report_headline(self, folder) -> list[tuple[str, str]]:
        """The (figure, label) boxes under the verdict on the HTML page."""
        page = self._page()
        return page.headline(folder) if page else []

    def report_sections(self, folder) -> list[str]:
        """The family's HTML sections of the page, between the headline and the JSON files,
        built with toolchain.reports.html's ``table`` / ``row`` / ``figure`` / ``esc``."""
        page = self._page()
        return page.sections(folder) if page else []

    def build_facts(self, folder):
        """The target's row of a build's summary page: a toolchain.reports.build.BuildFacts
        (bytes, memory, latencies, a note); default: nothing but the verdict."""
        from toolchain.reports.build import BuildFacts

        page = self._page()
        return page.build_facts(folder) if page else BuildFacts()

    def check_tools(self, device: Device, workdir: Path) -> list[str]:
        """Run this family's tools for ``device`` on a one-line program in ``workdir``.

        Returns one line per missing or broken piece, each saying how to install it (empty when
        everything works). Used by ``edgec doctor`` and by the setup script.
        """
        return []

    def compiler_argv(self, device: Device, options: CommonOptions) -> tuple[str, ...]:
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


# ---------------------------------------------------------------- typed options per family
def available_backends() -> list[Backend]:
    """The backends of every family that has devices (a family that fails to load is left out
    of the option lists; using one of its targets then reports the error)."""
    import logging

    found = []
    for family in sorted({d.family for d in devices().values()}):
        try:
            found.append(backend_for(family))
        except (ConfigError, ImportError) as exc:
            logging.getLogger(__name__).debug("backend %s unavailable: %s", family, exc)
    return found


def options_class(backend: Backend, command: str) -> type[Options] | None:
    """``backend``'s options class for ``command`` ("compile" or "simulate")."""
    if command not in ("compile", "simulate"):
        raise ValueError(command)
    return backend.Options if command == "compile" else backend.SimulateOptions


def _own(backend: Backend, command: str) -> list[str]:
    from toolchain.options import own_fields

    cls = options_class(backend, command)
    if cls is None:
        return []
    return [f.name for f in (own_fields(cls) if command == "compile" else fields(cls))]


def add_option_flags(parser, command: str) -> None:
    """The flags of ``command`` generated from every family's options class: for compile,
    the common options, then one group per family."""
    from toolchain.options import add_flags, own_fields

    taken: set[str] = set()
    if command == "compile":
        add_flags(parser, CommonOptions, "options of every target", taken=taken)
    for b in available_backends():
        cls = options_class(b, command)
        if cls is not None:
            add_flags(parser, cls, cls.title,
                      own_fields(cls) if command == "compile" else None, taken=taken)


def option_names(command: str) -> set[str]:
    """Every option name (argparse dest) of ``command`` across the families."""
    names = {f.name for f in fields(CommonOptions)} if command == "compile" else set()
    for b in available_backends():
        names.update(_own(b, command))
    return names


def option_owner(name: str, command: str, family: str) -> str | None:
    """The family (not ``family``) whose ``command`` option ``name`` is, unless ``family``
    takes it too; None when it is ``family``'s or nobody's."""
    family = RENAMED_FAMILIES.get(family, family)
    own = options_class(backend_for(family), command)
    if own is not None and name in {f.name for f in fields(own)}:
        return None
    for other in available_backends():
        if other.family != family and name in _own(other, command):
            return other.family
    return None


def foreign_option(name: str, dev: Device, command: str = "compile") -> ConfigError | None:
    """The error for option ``name`` (a dest) on ``dev`` when it is another family's option
    and not ``dev``'s, else None."""
    from toolchain.options import flag_of

    other = option_owner(name, command, dev.family)
    if other is None:
        return None
    return ConfigError(f"option {flag_of(name)} does not apply to target {dev.name} "
                       f"(family {dev.family}); it is an option of the {other} targets")


def typed_options(dev: Device, values: Mapping[str, Any], command: str = "compile"
                  ) -> Options | None:
    """``values`` (names with ``_`` or ``-``; None is "not given") as ``dev``'s family's
    typed options for ``command``, validated. An option of another family is an error naming
    that family; an unknown one lists the known ones. None: the family has no simulate
    options and none were given."""
    values = {k.replace("-", "_"): v for k, v in values.items() if v is not None}
    for name in values:
        error = foreign_option(name, dev, command)
        if error is not None:
            raise error
    cls = options_class(backend_for(dev.family), command)
    if cls is None:
        if values:
            from toolchain.options import flag_of

            raise ConfigError(f"option {flag_of(next(iter(values)))} does not apply to target "
                              f"{dev.name}: 'edgec {command}' takes no options for the "
                              f"{dev.family} family")
        return None
    return cls.from_mapping(values, dev.family)


def as_options(dev: Device, options: Any) -> Options:
    """``options`` for a compile for ``dev``: None (the defaults), a mapping, or an instance
    of the family's class (an instance of another family's class is an error)."""
    cls = backend_for(dev.family).Options
    if options is None:
        return cls()
    if isinstance(options, Mapping):
        return typed_options(dev, options)
    if type(options) is not cls:
        raise ConfigError(f"target {dev.name} (family {dev.family}) takes {cls.__name__}, "
                          f"not {type(options).__name__}")
    return options
