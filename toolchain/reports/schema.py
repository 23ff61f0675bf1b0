"""The schema of the JSON reports: ``report.json`` (written by ``edgec compile``),
``simulation.json`` (``edgec simulate``) and ``verify.json`` (``edgec verify --json`` or the
build's verify step), as dataclasses with stable keys.

Version 2 (``SCHEMA_VERSION``); the loader reads versions 1 and 2 (``READABLE_VERSIONS``).
A report without a ``schema_version`` key is version 1: compile wrote the same keys before the
key existed. The loader checks every key the dataclasses name (present, right type) and fails
with one line naming the file and the key; keys it does not know are kept in ``extra`` (a newer
edgec may add keys; ``tests/test_report.py`` checks that compile writes none the schema does
not document).

Changes: version 2 adds ``memory.arena_trace`` (``ArenaTrace``, written by every CPU compile):
the kernel of each call in order (``calls``), the arena bytes live during each call
(``live_bytes``; ``peak_bytes`` at call ``peak_call``), and every arena buffer (``buffers``:
``id``, ``offset`` and ``bytes`` in the arena, ``first`` call that writes it (-1: a graph
input), ``last`` call that reads it (the number of calls: a model output), ``role`` input /
temp / output, ``name``: the tensor name of an input or output, else the kernel that writes
it). It replaces version 1's ``memory.arena_over_calls``, which no edgec wrote.

Keys, the CPU family (``CpuReport``: ARM, RISC-V and host; ``family`` "cpu", written "arm"
before the host joined the family, which reads the same): the target and its build (``triple``,
``cpu``, ``features``, ``compiler``, ``pipeline``, ``schedule``, ``threads``), kernel calls before and after fusion, the
kernels (``kernels[name] = {ops, calls}``, in call order), ``memory`` (bytes: arena with and
without buffer reuse, workspace, weights; ``arena_trace``, the arena over the kernel sequence),
``binary_bytes`` / ``library_bytes``, seconds per stage, ``tolerance``.
Optional per-kernel speed: ``kernel_seconds`` or ``kernel_instructions`` (name -> figure).
Cortex-M (``family`` "cortexm") writes the same keys plus ``mcu`` (``McuMemory``: flash and SRAM
of the image and of libmodel.a against the device).

``profile.json`` (``Profile``, written by ``edgec run OUT --profile``; its own version,
``profile_version`` 1, ``PROFILE_VERSION``): speed per kernel of one inference, ``kind``
"time" (``unit`` "seconds": a profiling build of the driver timed with clock_gettime around
each kernel call, the median of ``runs`` runs, natively) or "instructions" (``unit``
"instructions": exact guest instructions per call under qemu-user, counted by the TCG plugin
of examples/armcount between marker system calls; emulated, so not time). ``where`` says which;
``total`` is the whole inference the same way (edgec_model_run: median seconds, or its
instructions); ``kernels[name] = {calls, value, share}`` (``value`` summed over the kernel's
calls, ``share`` of the kernels' sum), in call order; ``calls``: each call's kernel and value.

Which class a report.json is read as is its family's choice: the backend's
``report_class`` (``toolchain.targets.registry.Backend``), found by the report's ``family``.

FPGA (``FpgaReport``): the device and its part totals, the hls4ml config, the per-layer plan
(``layers``), the chosen ``estimate`` (latency cycles/ns, II, resources: labelled estimates),
``estimates_by_strategy``, ``utilization`` (used / available / percent per resource, ``fits``),
``hls`` (the project), ``rtl`` (whether da4ml RTL exists, why not), ``compression``,
optionally ``output_steps`` (per output, the quantization step verify allows it to differ by).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from toolchain.errors import ConfigError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


class SchemaError(ConfigError):
    """A report file does not match the schema (one line: file, key, what is wrong)."""


# ---------------------------------------------------------------- ARM and host
@dataclass(frozen=True)
class Kernel:
    ops: list[str]
    calls: int


@dataclass(frozen=True)
class ArenaBuffer:
    """One arena buffer: where it lies and from which call to which call it is alive."""

    id: int
    offset: int
    bytes: int
    first: int  # the call that writes it; -1: a graph input, copied in before the first call
    last: int  # the last call that reads it; len(calls): a model output
    role: str  # "input", "temp" or "output"
    name: str  # an input's or output's tensor name, else the kernel that writes it


@dataclass(frozen=True)
class ArenaTrace:
    """The arena over the kernel sequence (``toolchain.reports.arena.arena_trace``)."""

    calls: list[str]  # the kernel of each call, in order
    live_bytes: list[int]  # bytes of the buffers alive during each call
    buffers: list[ArenaBuffer]
    peak_bytes: int
    peak_call: int


@dataclass(frozen=True)
class CpuMemory:
    arena_bytes: int
    arena_bytes_without_reuse: int
    buffers: int
    workspace_bytes: int
    weight_bytes: int
    arena_trace: Optional[ArenaTrace] = None  # version 2


@dataclass(frozen=True)
class McuMemory:
    """A microcontroller image (Cortex-M) against the device: bytes of flash (code, const
    weights, .data's initial values) and SRAM (.data, .bss: arena and workspace, stack), for
    the linked image and for libmodel.a alone."""

    board: str
    flash_bytes: int
    flash_available: int
    ram_bytes: int
    ram_available: int
    stack_bytes: int
    library_flash_bytes: int
    library_ram_bytes: int
    sections: dict[str, int]


@dataclass(frozen=True)
class CpuReport:
    target: str
    triple: str
    cpu: str
    features: list[str]
    compiler: str
    pipeline: str
    schedule: str
    threads: int
    kernel_calls_before_fusion: int
    kernel_calls_after_fusion: int
    kernel_calls: int
    distinct_kernels: int
    kernels: dict[str, Kernel]
    memory: CpuMemory
    binary_bytes: int
    library_bytes: int
    stage_seconds: dict[str, float]
    tolerance: float
    input_model: str
    total_seconds: float
    kernel_seconds: Optional[dict[str, float]] = None
    kernel_instructions: Optional[dict[str, int]] = None
    mcu: Optional[McuMemory] = None  # Cortex-M: flash and SRAM against the device
    schema_version: int = SCHEMA_VERSION
    family: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- FPGA
@dataclass(frozen=True)
class FpgaDeviceInfo:
    name: str
    part: str
    totals: dict[str, int]


@dataclass(frozen=True)
class Estimate:
    strategy: str
    source: str
    latency_cycles: int
    latency_ns: float
    ii_cycles: int
    resources: dict[str, int]
    layers: list[dict]
    note: str = ""


@dataclass(frozen=True)
class Resource:
    used: int
    available: int
    percent: float


@dataclass(frozen=True)
class Utilization:
    source: str
    resources: dict[str, Resource]
    fits: bool


@dataclass(frozen=True)
class RtlInfo:
    available: bool
    reason: str = ""


@dataclass(frozen=True)
class FpgaReport:
    family: str
    device: FpgaDeviceInfo
    config: dict
    input_type: str
    layers: list[dict]
    estimate: Estimate
    estimates_by_strategy: dict
    utilization: Utilization
    hls: dict
    rtl: RtlInfo
    compression: Optional[dict]
    tolerance: float
    target: str
    input_model: str
    total_seconds: float
    output_steps: Optional[dict[str, float]] = None  # per output: the step verify allows
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- simulate / verify
@dataclass(frozen=True)
class CEmulation:
    samples: int
    test_set: str
    argmax_agreement: float
    max_abs_error: float
    mean_abs_error: float
    max_error_of_range: float
    seconds: float
    accuracy: Optional[float] = None
    reference_accuracy: Optional[float] = None


@dataclass(frozen=True)
class RtlSimulation:
    ran: bool
    reason: str = ""
    bit_exact: Optional[bool] = None
    mismatched_values: Optional[int] = None
    latency_cycles: Optional[int] = None
    latency_ns: Optional[float] = None
    ii_cycles: Optional[int] = None
    lut_estimate: Optional[int] = None
    ff_estimate: Optional[int] = None
    simulator: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Simulation:
    family: str
    target: str
    c_emulation: CEmulation
    estimate: Estimate
    utilization: Utilization
    rtl: RtlSimulation
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs_error: float
    max_rel_error: float
    output_range: float
    mismatched: int
    tolerance: float
    ok: bool
    abs_tolerance: Optional[float] = None


@dataclass(frozen=True)
class Verification:
    ok: bool
    outputs: list[OutputComparison]


# ---------------------------------------------------------------- profile.json
PROFILE_VERSION = 1


@dataclass(frozen=True)
class KernelFigure:
    """One kernel's part of an inference: its calls and their time or instructions."""

    calls: int
    value: float  # seconds or instructions per inference, summed over the kernel's calls
    share: float  # of the sum over all kernels, 0..1


@dataclass(frozen=True)
class CallFigure:
    kernel: str
    value: float


@dataclass(frozen=True)
class Profile:
    """OUT/profile.json: time or instructions per kernel (``edgec run OUT --profile``)."""

    kind: str  # "time" or "instructions"
    unit: str  # "seconds" or "instructions"
    where: str  # e.g. "on this machine (x86_64)", "qemu-aarch64 -cpu cortex-a72, not the board"
    runs: int  # timed runs the medians are of (1 for instruction counts: they are exact)
    total: float  # the whole inference (edgec_model_run), the same way
    kernels: dict[str, KernelFigure]
    calls: list[CallFigure]
    target: str = ""
    profile_version: int = PROFILE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kernel_sum(self) -> float:
        return sum(k.value for k in self.kernels.values())


def load_profile(path: Path) -> Profile:
    """OUT/profile.json, validated (SchemaError names the file and the key)."""
    data = _read(path)
    version = data.get("profile_version") if isinstance(data, dict) else None
    if version != PROFILE_VERSION:
        raise SchemaError(f"{path}: profile_version {version!r}, this edgec reads "
                          f"{PROFILE_VERSION}; profile again with 'edgec run OUT --profile'")
    try:
        return _build(Profile, data)
    except SchemaError as exc:
        raise SchemaError(f"{path} does not match the profile schema: {exc}") from None


RENAMED_FAMILIES = {"arm": "cpu"}  # the CPU family was called "arm" until the host joined it


# ---------------------------------------------------------------- loading
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp, value, where: str):
    """``value`` as ``tp`` (a field's annotation), or SchemaError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        return _convert(next(o for o in options if o is not type(None)), value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"'{where}' should be an object, got {type(value).__name__}")
        return _build(tp, value, where + ".")
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"'{where}' should be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"'{where}' should be an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise SchemaError(f"'{where}' should be {_type_name(tp)}, got "
                          f"{type(value).__name__} {json.dumps(value)[:40]}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    kwargs, known = {}, set()
    for f in dataclasses.fields(cls):
        known.add(f.name)
        if f.name == "extra":
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(f"key '{prefix}{f.name}' is missing")
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name], prefix + f.name)
    if "extra" in known:
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
    return cls(**kwargs)


def from_json(cls, data: dict, source: str = "report"):
    """``data`` as the dataclass ``cls``; SchemaError (one line) on any mismatch."""
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", 1)
    if version not in READABLE_VERSIONS:
        raise SchemaError(f"{source}: schema_version {version!r}, this edgec reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}; recompile with this edgec")
    if any(f.name == "schema_version" for f in dataclasses.fields(cls)):
        data = {**data, "schema_version": version}  # no key: version 1, not this one
    try:
        return _build(cls, data)
    except SchemaError as exc:
        raise SchemaError(f"{source} does not match report schema {SCHEMA_VERSION}: {exc}") \
            from None


def to_json(obj) -> dict:
    """The dataclass as JSON-ready dicts: ``extra`` keys back at their level, unset optional
    keys left out, so ``from_json(to_json(x)) == x``."""
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if not dataclasses.is_dataclass(obj):
        return obj
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "extra":
            out.update(value)
        elif value is not None or f.default is dataclasses.MISSING:
            out[f.name] = to_json(value)
    return out


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SchemaError(f"{path} not found") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path} is not valid JSON ({exc})") from None


def report_class(data: dict, source: str = "report"):
    """The schema class of a report.json: the one its family's backend declares
    (``Backend.report_class``). FPGA reports say ``family``; CPU ones may not."""
    from toolchain.errors import ConfigError
    from toolchain.targets.registry import available_backends, backend_for

    family = data.get("family", "cpu") if isinstance(data, dict) else None
    family = RENAMED_FAMILIES.get(family, family)
    cls = None
    if isinstance(family, str) and family.isidentifier():
        try:
            cls = backend_for(family).report_class
        except ConfigError:
            pass
    if cls is None:
        known = [b.family for b in available_backends() if b.report_class is not None]
        raise SchemaError(f"{source}: unknown family {family!r}; known: {', '.join(known)}")
    return cls


def load_report(path: Path):
    """A report.json, validated (SchemaError names the file and the key on a mismatch)."""
    data = _read(path)
    return from_json(report_class(data, str(path)), data, str(path))


def load_simulation(path: Path) -> Simulation:
    return from_json(Simulation, _read(path), str(path))


def load_verification(path: Path) -> Verification:
    """verify.json as the build writes it (``{ok, outputs}``) or as ``edgec verify --json``
    writes it (the list of outputs)."""
    data = _read(path)
    if isinstance(data, list):
        data = {"ok": all(isinstance(c, dict) and c.get("ok") for c in data), "outputs": data}
    return from_json(Verification, data, str(path))
