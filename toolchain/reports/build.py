"""What an ``edgec build`` output folder holds for its summary page: each model chain's
compression steps (``compress/compress.json``, ``export/export.json``) and each target's
compiled folder (``T/compile/``, with ``T/verify/`` and ``T/simulate/``), read through the same
schema as ``edgec report OUT`` (``folder.load_folder``).

Nothing is recomputed; a step the build has not run yet is simply absent from the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import ConfigError

from .folder import Folder, load_folder
from .summary import Verdict, verdict

BUILD_JSON = "build.json"  # toolchain.buildflow.runner.BUILD_JSON (not imported: no torch)
MAIN = "main"  # the model chain of [model], as the build's report step names it


@dataclass(frozen=True)
class StepRow:
    """One point of a model chain: the model as loaded, after each compression step, and as
    exported to ONNX (metric on the zoo test set, and the bytes of its weights or file)."""

    label: str
    metric: str
    score: float | None
    bytes: int
    bytes_what: str  # "weights" (PyTorch, the compressed dtype) or "ONNX file"
    nonzero_params: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Latency:
    value: float
    unit: str  # "cycles", "ms", "instructions"
    source: str  # where the figure comes from, in words
    ns: float | None = None  # the same in nanoseconds, when it is a time


@dataclass(frozen=True)
class BuildFacts:
    """What a target's folder costs, for its row of the build page (``Backend.build_facts``):
    bytes where the family has them (None: not a figure of this family, e.g. an FPGA's weights
    are in the logic), the memory cell as HTML when it is not a byte count, every latency
    figure, and a paragraph explaining them when one is needed."""

    weight_bytes: int | None = None
    ram_bytes: int | None = None
    binary_bytes: int | None = None
    memory_html: str | None = None
    memory_text: str | None = None  # the same in words, for a plot
    latencies: tuple[Latency, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class TargetRow:
    name: str
    chain: str
    folder: Folder
    verdict: Verdict

    @property
    def family(self) -> str:
        return self.folder.family

    @property
    def facts(self) -> BuildFacts:
        from toolchain.targets import backend_for

        return backend_for(self.family).build_facts(self.folder)

    @property
    def weight_bytes(self) -> int | None:
        return self.facts.weight_bytes

    @property
    def ram_bytes(self) -> int | None:
        return self.facts.ram_bytes

    @property
    def binary_bytes(self) -> int | None:
        return self.facts.binary_bytes

    def latencies(self) -> list[Latency]:
        """Every latency figure the target's reports hold, labelled with where it is from."""
        return list(self.facts.latencies)


@dataclass(frozen=True)
class BuildFolder:
    path: Path
    config: dict
    chains: dict[str, list[StepRow]]  # model chain -> its rows, in order
    sources: dict[str, str]  # model chain -> the model it starts from
    targets: list[TargetRow]


def is_build(path: Path) -> bool:
    return (Path(path) / BUILD_JSON).is_file()


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None


def _label(config: dict) -> str:
    """``quantize int8``, ``prune 0.5``: the step and its main setting."""
    step = config.get("step", "?")
    for key in ("mode", "fraction", "sparsity", "rank", "teacher"):
        if config.get(key) is not None:
            return f"{step} {config[key]}"
    return step


def chain_rows(folder: Path) -> tuple[str | None, list[StepRow]]:
    """The rows of the model chain whose load/compress/export folders sit in ``folder``."""
    source = (_read(folder / "load" / "source.json") or {}).get("source")
    rows: list[StepRow] = []
    comp = _read(folder / "compress" / "compress.json")
    try:
        if comp is not None:
            first = comp["initial"]
            rows.append(StepRow("as trained", first["metric"], first["score"], first["bytes"],
                                "weights", first["nonzeros"]))
            for s in comp["steps"]:
                a = s["after"]
                rows.append(StepRow(_label(s["config"]), a["metric"], a["score"], a["bytes"],
                                    "weights", a["nonzeros"], s["seconds"]))
        exp = _read(folder / "export" / "export.json")
        if exp is not None:
            metric = rows[-1].metric if rows else "top1"
            rows.append(StepRow("ONNX export", metric, exp.get("onnx_accuracy"),
                                exp["file_bytes"], "ONNX file"))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{folder}: a compress.json or export.json lacks {exc}") from None
    return source, rows


def load_build(out: Path) -> BuildFolder:
    """The build output folder ``out`` (it holds build.json), validated."""
    out = Path(out)
    config = _read(out / BUILD_JSON)
    if not isinstance(config, dict) or not isinstance(config.get("target"), list):
        raise ConfigError(f"{out / BUILD_JSON} is not an edgec build file record")
    chains, sources = {}, {}
    source, rows = chain_rows(out)
    if rows or source:
        chains[MAIN], sources[MAIN] = rows, source or "?"
    targets = []
    for t in config["target"]:
        name = t.get("name") if isinstance(t, dict) else None
        if not isinstance(name, str):
            raise ConfigError(f"{out / BUILD_JSON}: a target has no name")
        chain = MAIN
        if (out / name / "load").is_dir() or (out / name / "export").is_dir():
            chain = name
            src, rows = chain_rows(out / name)
            chains[name], sources[name] = rows, src or "?"
        compiled = out / name / "compile"
        if (compiled / "report.json").is_file():
            folder = load_folder(compiled)
            targets.append(TargetRow(name, chain, folder, verdict(folder)))
    if not targets and not chains:
        raise ConfigError(f"{out} holds no finished step of the build yet; run edgec build")
    return BuildFolder(out, config, chains, sources, targets)
